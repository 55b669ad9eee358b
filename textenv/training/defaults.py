"""`textenv build-defaults`: rebuild every artifact the package ships, reproducibly from a seed.

Stages, in order (each written to a temporary directory, then moved into ``textenv/data``):

1. ``tokenizer/``: a byte-level BPE trained on the corpora of the built tasks (``RECIPE["tasks"]``, or
   ``tasks=`` / ``--tasks``).
2. ``pretrained/``: a tiny GPT-2 pretrained on the multi-task plain-text corpus (stage 1).
3. ``policy/``: that model fine-tuned on mixed-quality (prompt, response) pairs of all tasks (stage 2),
   the default policy and the KL reference of RL.
4. ``rewards/<task>/``: one learned reward model per task (stage 3, MSE on gold-scored texts).
5. ``MANIFEST.json``: each file's SHA-256 and the measured quality (held-out perplexity; each reward
   model's Spearman and pairwise accuracy against gold; the policy's mean gold score per task at
   temperature 1).

``scale`` multiplies every data and step count (tests build a miniature set with ``scale=0.01``).
:func:`build_reward_models` (``--rewards-only``) builds stage 4 alone for some tasks, on the tokenizer and
pretrained LM already there, and merges them into the manifest.

Steps 1-2 above run in the calling process. What follows is independent jobs: the policy (step 3, with its
gold evaluation) and each task's reward model (step 4). ``jobs=N`` (``--jobs N``) runs them in ``N`` spawned
worker processes, each with the caller's torch thread count and the seeds of the serial path, so the bytes
are those of ``jobs=1``, which runs them one after another in-process. Their results are installed (policy,
then rewards in task order) only once every job has succeeded; a failed job raises :class:`BuildJobError`
and leaves ``policy/`` and ``rewards/`` as they were. Keep ``jobs`` x threads within the machine's cores.
Spawned workers re-import the calling script, so a script that calls these functions with ``jobs > 1``
needs an ``if __name__ == "__main__":`` guard (the ``textenv`` console script and ``python -m textenv`` are
safe); workers get the tasks by name, so a task the script adds to ``TASKS`` must be added at its import,
outside that guard.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from textenv.models import DATA_DIR
from textenv.tasks import TASKS, get_task

#: The recipe at scale 1.0. Sizes are chosen so the whole build takes about 25 minutes on 2 CPU cores
#: (``--jobs 2 --threads 1``; the MANIFEST records the measured ``build_seconds``).
RECIPE: dict[str, Any] = {
    # the tasks the shipped artifacts cover; a task registered later joins the build when it is added here
    # (its reward model, its share of the corpora and of the MANIFEST's quality numbers)
    "tasks": ("sentiment", "arithmetic", "keywords", "translation", "summarization", "qa", "dialogue", "detox"),
    "vocab_size": 2048,  # 4096 shortens the eight tasks' documents by 0.3% only (36.1 against 36.2 tokens)
    "tokenizer_docs_per_task": 20_000,
    # 320 positions: a whole dialogue (56 prompt + 4 x 32 agent + 3 x 40 inserted = 304 tokens) fits
    "model": {"n_layer": 4, "n_embd": 128, "n_head": 4, "n_positions": 320},
    "pretrain_docs_per_task": 60_000,
    "pretrain_steps": 4000,
    "pretrain_batch": 32,
    "pretrain_lr": 1e-3,
    "sft_pairs_per_task": 30_000,
    # arithmetic is the hardest to learn; translation's grammar and the dialogue's turns come next
    "sft_task_weight": {"arithmetic": 2, "translation": 2, "dialogue": 2},
    "sft_steps": 2500,
    "sft_batch": 32,
    "sft_lr": 3e-4,
    # batches of similar length (TrainConfig.group_by_length): with eight tasks of 8 to 80 tokens, a batch
    # drawn uniformly is mostly padding
    "group_by_length": True,
    "reward_steps": None,  # None: the tuned default of build_default_reward_model
    "eval_docs_per_task": 500,
    "policy_eval_prompts": 256,
}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _scaled(n: int, scale: float, minimum: int) -> int:
    return max(minimum, int(round(n * scale)))


def _mixed(lists: list[list[Any]], seed: int) -> list[Any]:
    out = [x for lst in lists for x in lst]
    order = np.random.default_rng(seed).permutation(len(out))
    return [out[i] for i in order]


def policy_gold_scores(model: Any, tokenizer: Any, n_prompts: int, seed: int, max_new_tokens: int | None = None,
                       tasks: Sequence[str] | None = None) -> dict[str, float]:
    """Mean gold score per task (``tasks``, default ``RECIPE["tasks"]``) of ``model`` sampling at
    temperature 1 on held-out prompts."""
    import torch

    out = {}
    gen = torch.Generator().manual_seed(seed)
    for name in RECIPE["tasks"] if tasks is None else tasks:
        task = get_task(name)
        prompts = task.prompts(n_prompts, split="test", seed=seed + 17)
        n_new = max_new_tokens or task.default_max_new_tokens
        if task.turn_separator is not None:  # multi-turn: the task plays the other speaker, as the env does
            completions = generate_dialogues(model, tokenizer, task, prompts, n_new, gen,
                                             np.random.default_rng([seed, 23]))
        else:
            completions = generate_completions(model, tokenizer, prompts, n_new, gen)
        out[name] = float(np.mean(task.gold_score(prompts, completions)))
    return out


def generate_completions(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int,
                         generator: Any, batch_size: int = 64) -> list[str]:
    """Sample completions of ``prompts`` at temperature 1 in left-padded batches, through the cached decoder
    (:func:`textenv.decoding.sample_tokens`), decoded without special tokens.

    Sampling is ``torch.multinomial`` on the softmax of the logits, with ``generator``: the draws the
    shipped MANIFEST's ``gold_score_at_temperature_1`` was measured with, so a rebuild reproduces it.
    """
    from textenv.decoding import sample_tokens

    sample = _temperature_1(generator)
    texts: list[str] = []
    model.eval()
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        ids, attn = _left_padded([tokenizer(p, add_special_tokens=False)["input_ids"] for p in chunk],
                                 tokenizer.pad_token_id)
        outs = sample_tokens(model, ids, attn, max_new_tokens, sample, tokenizer.eos_token_id)
        texts += [tokenizer.decode(o, skip_special_tokens=True) for o in outs]
    return texts


def _temperature_1(generator: Any) -> Callable[[Any], Any]:
    """``logits (B, V) -> tokens (B,)``: ``torch.multinomial`` on the softmax, drawing with ``generator``."""
    import torch

    def sample(logits: torch.Tensor) -> torch.Tensor:
        return torch.multinomial(torch.softmax(logits.float(), -1), 1, generator=generator).squeeze(-1)

    return sample


def _left_padded(rows: list[list[int]], pad_id: int) -> tuple[Any, Any]:
    import torch

    P = max(len(r) for r in rows)
    ids = torch.tensor([[pad_id] * (P - len(r)) + r for r in rows])  # (B, P)
    attn = torch.tensor([[0] * (P - len(r)) + [1] * len(r) for r in rows])  # (B, P)
    return ids, attn


def generate_dialogues(model: Any, tokenizer: Any, task: Any, prompts: list[str], max_new_tokens: int,
                       generator: Any, rng: np.random.Generator, batch_size: int = 64) -> list[str]:
    """Multi-turn completions of ``prompts`` as :class:`textenv.env.TextGenEnv` plays them: each agent turn is
    sampled at temperature 1 (as in :func:`generate_completions`) up to ``max_new_tokens`` tokens, the turn
    separator or EOS (which ends the dialogue); then the task's :meth:`next_turn` reply (drawn with ``rng``,
    cut to ``task.default_max_inserted_tokens`` tokens) is appended, until it returns ``None`` or after
    ``task.default_max_turns`` agent turns. Returns each whole transcript after the prompt, decoded without
    special tokens (what the gold scorer reads)."""
    from textenv.decoding import sample_tokens

    sample = _temperature_1(generator)
    sep = tokenizer(task.turn_separator, add_special_tokens=False)["input_ids"]
    if len(sep) != 1:
        raise ValueError(f"the turn separator {task.turn_separator!r} of task {task.name!r} is {len(sep)} tokens "
                         "of this tokenizer; it must be one")
    eos = tokenizer.eos_token_id
    texts: list[str] = []
    model.eval()
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in chunk]
        after: list[list[int]] = [[] for _ in chunk]  # agent turns and inserted replies, per row
        dialogue: list[list[str]] = [[] for _ in chunk]
        live = list(range(len(chunk)))
        for _ in range(task.default_max_turns):
            ids, attn = _left_padded([prompt_ids[i] + after[i] for i in live], tokenizer.pad_token_id)
            turns = sample_tokens(model, ids, attn, max_new_tokens, sample, [eos, sep[0]])
            still = []
            for i, turn in zip(live, turns, strict=True):
                after[i] += turn
                dialogue[i].append(tokenizer.decode(turn, skip_special_tokens=True))
                reply = None if turn[-1] == eos else task.next_turn(chunk[i], dialogue[i], rng)
                if reply is not None:
                    reply_ids = tokenizer(reply, add_special_tokens=False)["input_ids"]
                    after[i] += reply_ids[:task.default_max_inserted_tokens]
                    dialogue[i].append(reply)
                    still.append(i)
            live = still
            if not live:
                break
        texts += [tokenizer.decode(a, skip_special_tokens=True) for a in after]
    return texts


def _install(src: Path, dst: Path) -> None:
    """Move a finished directory into place, replacing ``dst`` only once ``src`` is complete."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    old = dst.parent / f".{dst.name}.old"
    if old.exists():
        shutil.rmtree(old)
    if dst.exists():
        os.replace(dst, old)
    shutil.copytree(src, dst)
    shutil.rmtree(old, ignore_errors=True)


def _final_model_files(train_dir: Path, dst: Path) -> None:
    """Copy the final model + tokenizer of a training run (not its checkpoints) into ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in train_dir.iterdir():
        if f.is_file() and not f.name.startswith("."):
            shutil.copy2(f, dst / f.name)


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    """Fill in each artifact's SHA-256 and size, and write ``out/MANIFEST.json`` atomically."""
    manifest["artifacts"] = {}
    for f in sorted(out.rglob("*")):
        if f.is_file() and f.name != "MANIFEST.json" and not any(p.startswith(".") for p in f.relative_to(out).parts):
            manifest["artifacts"][str(f.relative_to(out))] = {"sha256": sha256(f), "bytes": f.stat().st_size}
    manifest["total_bytes"] = sum(a["bytes"] for a in manifest["artifacts"].values())
    tmp = out / ".MANIFEST.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    os.replace(tmp, out / "MANIFEST.json")


def check_task_names(tasks: Sequence[str] | None) -> list[str]:
    """``tasks`` (default ``RECIPE["tasks"]``) as a list of registered task names, or ValueError naming one
    that is not registered (or an empty list)."""
    names = list(RECIPE["tasks"] if tasks is None else tasks)
    if not names:
        raise ValueError("tasks is empty; name at least one task")
    for n in names:
        if n not in TASKS:
            raise ValueError(f"unknown task {n!r} to build; known tasks: {sorted(TASKS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"tasks names a task twice: {names}")
    return names


class BuildJobError(RuntimeError):
    """A job of the build after pretraining (the policy, or one task's reward model) failed. The message names
    the job and the original error, which is also the ``__cause__``; nothing of any job was installed."""


def check_jobs(jobs: Any) -> int:
    """``jobs`` (the worker processes of a build) as an int >= 1, or ValueError naming the value."""
    if isinstance(jobs, bool) or not isinstance(jobs, numbers.Integral) or jobs < 1:
        raise ValueError(f"jobs must be an int >= 1, got {jobs!r}")
    return int(jobs)


#: One job of a build: (its name for messages and logs, a function, its positional arguments).
Job = tuple[str, Callable[..., Any], tuple[Any, ...]]


def run_jobs(specs: Sequence[Job], jobs: int, on_done: Callable[[str, Any], None] = lambda name, result: None
             ) -> list[Any]:
    """``fn(*args)`` of each job in ``specs``, in their order; ``on_done(name, result)`` is called as each
    one finishes.

    ``jobs=1`` runs them one after another in this process. ``jobs > 1`` runs them in a pool of that many
    spawned processes (at most one per job), so each ``fn`` must be a module-level function and its
    arguments picklable, and the script calling this needs an ``if __name__ == "__main__":`` guard.
    ``on_done`` is then called in the order the jobs complete. The first job to fail raises
    :class:`BuildJobError` naming it, chained to its error; pending jobs are cancelled and running ones
    are waited for (they write only into the caller's work directory).
    """
    jobs = check_jobs(jobs)
    if jobs == 1:
        results = []
        for name, fn, args in specs:
            try:
                result = fn(*args)
            except Exception as exc:
                raise BuildJobError(f"{name} failed: {type(exc).__name__}: {exc}") from exc
            on_done(name, result)
            results.append(result)
        return results

    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    done: dict[int, Any] = {}
    pool = ProcessPoolExecutor(max_workers=min(jobs, max(1, len(specs))),
                               mp_context=multiprocessing.get_context("spawn"))
    try:
        futures = {pool.submit(fn, *args): i for i, (_, fn, args) in enumerate(specs)}
        for future in as_completed(futures):
            i = futures[future]
            try:
                done[i] = future.result()
            except Exception as exc:
                raise BuildJobError(f"{specs[i][0]} failed: {type(exc).__name__}: {exc}") from exc
            on_done(specs[i][0], done[i])
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return [done[i] for i in range(len(specs))]


def build_defaults(out_dir: str | os.PathLike[str] | None = None, seed: int = 0, scale: float = 1.0,
                   progress: bool = True, log: Any = print, tasks: Sequence[str] | None = None,
                   jobs: int = 1) -> dict[str, Any]:
    """Rebuild the shipped artifacts into ``out_dir`` (default: the package's ``textenv/data``), for the
    tasks ``tasks`` (default ``RECIPE["tasks"]``): their corpora train the tokenizer and both LMs, and each
    gets a reward model.

    ``jobs`` > 1 builds the policy and the reward models in that many spawned worker processes, to the same
    bytes as ``jobs=1`` (see the module docstring; a script calling this with ``jobs > 1`` needs an
    ``if __name__ == "__main__":`` guard). A failed one raises :class:`BuildJobError`, with ``policy/`` and
    ``rewards/`` as they were (the new tokenizer and pretrained LM are installed by then).

    Returns the manifest it writes to ``out_dir/MANIFEST.json``.
    """
    import torch
    from transformers import GPT2LMHeadModel

    from textenv.models import tiny_gpt2_config
    from textenv.training.lm import pretrain
    from textenv.training.loop import TrainConfig
    from textenv.training.tokenizer import train_tokenizer

    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale!r}")
    jobs = check_jobs(jobs)
    out = Path(out_dir) if out_dir is not None else DATA_DIR
    out.mkdir(parents=True, exist_ok=True)
    R = RECIPE
    t_start = time.perf_counter()
    torch.manual_seed(seed)
    task_objs = [get_task(n) for n in check_task_names(tasks)]
    names = [t.name for t in task_objs]
    threads = torch.get_num_threads()
    manifest: dict[str, Any] = {"seed": seed, "scale": scale, "recipe": {**R, "tasks": names},
                                "artifacts": {}, "quality": {}, "versions": {"torch": torch.__version__},
                                "torch_threads": threads, "jobs": jobs}
    with tempfile.TemporaryDirectory(prefix="textenv-build-") as work_s:
        work = Path(work_s)
        # 1. tokenizer
        n_tok = _scaled(R["tokenizer_docs_per_task"], scale, 200)
        tok_texts = _mixed([t.pretrain_corpus(n_tok, seed=seed + 1) for t in task_objs], seed)
        tokenizer = train_tokenizer(tok_texts, vocab_size=R["vocab_size"] if scale >= 0.1 else 512)
        tokenizer.save_pretrained(str(work / "tokenizer"))
        _install(work / "tokenizer", out / "tokenizer")
        log(f"[build-defaults] tokenizer: {len(tokenizer)} tokens ({time.perf_counter() - t_start:.0f}s)")

        # 2. pretraining
        n_pre = _scaled(R["pretrain_docs_per_task"], scale, 200)
        texts = _mixed([t.pretrain_corpus(n_pre, seed=seed + 2) for t in task_objs], seed + 2)
        n_eval = _scaled(R["eval_docs_per_task"], scale, 20)
        eval_texts = [p + r for t in task_objs for p, r in t.sft_pairs(n_eval, seed=seed + 3, split="test")]
        cfg = tiny_gpt2_config(len(tokenizer), **R["model"], bos_token_id=tokenizer.eos_token_id,
                               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        model = GPT2LMHeadModel(cfg)
        steps = _scaled(R["pretrain_steps"], scale, 4)
        pre = pretrain(model, tokenizer, texts, work / "pretrain", TrainConfig(
            steps=steps, batch_size=R["pretrain_batch"], lr=R["pretrain_lr"], warmup_steps=max(1, steps // 20),
            max_length=R["model"]["n_positions"], eval_every=0, checkpoint_every=0, seed=seed, progress=progress,
            group_by_length=R["group_by_length"]), eval_texts=eval_texts)
        _final_model_files(work / "pretrain", work / "pretrained")
        _install(work / "pretrained", out / "pretrained")
        manifest["quality"]["pretrained"] = {"eval_loss": pre["eval_loss"], "perplexity": pre["perplexity"]}
        log(f"[build-defaults] pretrained: perplexity {pre['perplexity']:.2f} ({time.perf_counter() - t_start:.0f}s)")

        # 3-4. the policy and the reward models: independent jobs, installed once all of them succeeded
        recipe = {**R, "tasks": names}
        if jobs == 1:
            specs: list[Job] = [("policy", _policy_job, (model, tokenizer, names, recipe, work / "policy-job", seed,
                                                         scale, progress))]
            specs += [(_reward_job_name(n), _reward_job, (t, tokenizer, out / "pretrained", work / f"reward-{n}",
                                                             seed, scale, progress))
                      for n, t in zip(names, task_objs, strict=True)]
        else:
            del model  # the policy job loads it from work/pretrained
            specs = [("policy", _policy_worker, (str(work), names, recipe, str(work / "policy-job"), seed, scale,
                                                 progress, threads))]
            specs += [(_reward_job_name(n), _reward_worker, (n, str(work / "tokenizer"), True,
                                                                str(out / "pretrained"), str(work / f"reward-{n}"),
                                                                seed, scale, progress, threads))
                      for n in names]
        results = run_jobs(specs, jobs, _job_logger(log, t_start, names))
        manifest["quality"]["policy"] = results[0]
        manifest["quality"]["rewards"] = dict(zip(names, results[1:], strict=True))
        _install(work / "policy-job" / "policy", out / "policy")
        for n in names:
            _install(work / f"reward-{n}" / "final", out / "rewards" / n)

    manifest["build_seconds"] = round(time.perf_counter() - t_start, 1)
    write_manifest(out, manifest)
    log(f"[build-defaults] done in {manifest['build_seconds']:.0f}s, {manifest['total_bytes'] / 1e6:.1f} MB")
    return manifest


def _reward_job_name(task: str) -> str:
    return f"reward model {task!r}"


def _job_logger(log: Any, t_start: float, tasks: Sequence[str]) -> Callable[[str, Any], None]:
    """The log line of each finished job of :func:`run_jobs` (the policy's gold scores, a reward model's
    quality), with the build's seconds so far."""
    task_of = {_reward_job_name(n): n for n in tasks}

    def on_done(name: str, result: dict[str, Any]) -> None:
        what = (f"policy: gold {result['gold_score_at_temperature_1']}" if name == "policy"
                else f"reward model {task_of[name]}: {result}")
        log(f"[build-defaults] {what} ({time.perf_counter() - t_start:.0f}s)")

    return on_done


def _policy_job(model: Any, tokenizer: Any, task_names: list[str], recipe: dict[str, Any], job_dir: Path,
                seed: int, scale: float, progress: bool) -> dict[str, Any]:
    """Step 3: fine-tune the pretrained ``model`` (in place) into ``job_dir/policy`` and measure its gold
    scores; returns its quality for the manifest."""
    import torch

    from textenv.training.lm import finetune
    from textenv.training.loop import TrainConfig

    R = recipe
    torch.manual_seed(seed)  # no global RNG state from an earlier stage (finetune seeds itself anyway)
    task_objs = [get_task(n) for n in task_names]
    n_eval = _scaled(R["eval_docs_per_task"], scale, 20)
    n_sft = _scaled(R["sft_pairs_per_task"], scale, 200)
    pairs = _mixed([t.sft_pairs(n_sft * R["sft_task_weight"].get(t.name, 1), seed=seed + 4) for t in task_objs],
                   seed + 4)
    eval_pairs = [pr for t in task_objs for pr in t.sft_pairs(n_eval, seed=seed + 5, split="test")]
    steps = _scaled(R["sft_steps"], scale, 4)
    sft = finetune(model, tokenizer, pairs, job_dir / "sft", TrainConfig(
        steps=steps, batch_size=R["sft_batch"], lr=R["sft_lr"], warmup_steps=max(1, steps // 20),
        max_length=R["model"]["n_positions"], eval_every=0, checkpoint_every=0, seed=seed + 1, progress=progress,
        group_by_length=R["group_by_length"]), eval_pairs=eval_pairs)
    _final_model_files(job_dir / "sft", job_dir / "policy")
    gold = policy_gold_scores(model, tokenizer, _scaled(R["policy_eval_prompts"], scale, 16), seed,
                              tasks=task_names)
    return {"sft_eval_loss": sft["eval_loss"], "sft_perplexity": sft["perplexity"],
            "gold_score_at_temperature_1": gold}


def _policy_worker(work: str, task_names: list[str], recipe: dict[str, Any], job_dir: str, seed: int,
                   scale: float, progress: bool, threads: int) -> dict[str, Any]:
    """:func:`_policy_job` in a worker process, on the tokenizer and pretrained LM the build saved in
    ``work``, with the parent's torch thread count and seed."""
    import torch
    from transformers import GPT2LMHeadModel

    from textenv.models import quiet_progress
    from textenv.training.tokenizer import load_trained_tokenizer

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    tokenizer = load_trained_tokenizer(Path(work) / "tokenizer")
    with quiet_progress():
        model = GPT2LMHeadModel.from_pretrained(str(Path(work) / "pretrained"), dtype=torch.float32)
    return _policy_job(model, tokenizer, task_names, recipe, Path(job_dir), seed, scale, progress)


def _reward_job(task: Any, tokenizer: Any, pretrained: Path, job_dir: Path, seed: int, scale: float,
                progress: bool) -> dict[str, Any]:
    """Step 4 for ``task``: train and evaluate its reward model into ``job_dir/final`` (its checkpoints stay
    in ``job_dir/train``); returns its quality for the manifest."""
    import torch

    from textenv.rewards import load_reward_model
    from textenv.training.reward import build_default_reward_model, evaluate_reward_model

    torch.manual_seed(seed)  # no global RNG state from an earlier stage (the training seeds itself anyway)
    rm_dir = job_dir / "train"
    steps_rm = None if scale >= 1.0 else _scaled(400, scale * 10, 4)
    build_default_reward_model(task, rm_dir, tokenizer=tokenizer, seed=seed, steps=steps_rm, progress=progress,
                               pretrained=pretrained, n_train=None if scale >= 1.0 else _scaled(20_000, scale, 200))
    quality = evaluate_reward_model(load_reward_model(rm_dir), task, n=_scaled(1000, scale, 64), seed=seed + 9)
    _final_model_files(rm_dir, job_dir / "final")  # not its checkpoints
    return quality


def _reward_worker(task_name: str, tokenizer_dir: str, trained_tokenizer: bool, pretrained: str, job_dir: str,
                   seed: int, scale: float, progress: bool, threads: int) -> dict[str, Any]:
    """:func:`_reward_job` in a worker process, with the parent's torch thread count and seed. The tokenizer
    is loaded as the parent holds it: rebuilt as :func:`~textenv.training.tokenizer.train_tokenizer`
    returned it (``trained_tokenizer``, a full build), or by ``AutoTokenizer`` (``--rewards-only``)."""
    import torch
    from transformers import AutoTokenizer

    from textenv.training.tokenizer import load_trained_tokenizer

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    tokenizer = (load_trained_tokenizer(tokenizer_dir) if trained_tokenizer
                 else AutoTokenizer.from_pretrained(tokenizer_dir))
    return _reward_job(get_task(task_name), tokenizer, Path(pretrained), Path(job_dir), seed, scale, progress)


def build_reward_models(tasks: Sequence[str], out_dir: str | os.PathLike[str] | None = None, seed: int = 0,
                        scale: float = 1.0, progress: bool = True, log: Any = print, jobs: int = 1) -> dict[str, Any]:
    """Build only the reward models of ``tasks`` (``textenv build-defaults --rewards-only``) against the
    tokenizer and pretrained LM already in ``out_dir`` (default: the package's ``textenv/data``), and merge
    them into its ``MANIFEST.json`` (each one's quality, and a ``reward_builds`` entry with its seed, scale,
    seconds and ``jobs``). The tokenizer, the LMs and the other reward models are left as they are.

    ``jobs`` > 1 trains them in that many spawned worker processes, to the same bytes as ``jobs=1`` (see
    :func:`build_defaults`); a failed one raises :class:`BuildJobError` and installs none of them.

    This is how a task registered after the last full build gets a shipped reward model without a full
    rebuild; after a full rebuild that changes the tokenizer, every reward model is rebuilt anyway.

    Returns the manifest it writes.
    """
    import torch
    from transformers import AutoTokenizer

    from textenv.models import ModelLoadError

    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale!r}")
    jobs = check_jobs(jobs)
    task_objs = [get_task(n) for n in check_task_names(tasks)]
    names = [t.name for t in task_objs]
    out = Path(out_dir) if out_dir is not None else DATA_DIR
    for sub in ("tokenizer", "pretrained"):
        if not (out / sub).is_dir():
            raise ModelLoadError(f"{str(out / sub)!r} is missing: --rewards-only builds on a full build's tokenizer "
                                 f"and pretrained LM; run `textenv build-defaults` first")
    manifest_path = out / "MANIFEST.json"
    manifest: dict[str, Any] = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    t_start = time.perf_counter()
    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="textenv-build-") as work_s:
        work = Path(work_s)
        if jobs == 1:
            tokenizer = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
            specs: list[Job] = [(_reward_job_name(n), _reward_job, (t, tokenizer, out / "pretrained",
                                                                    work / f"reward-{n}", seed, scale, progress))
                                for n, t in zip(names, task_objs, strict=True)]
        else:
            specs = [(_reward_job_name(n), _reward_worker, (n, str(out / "tokenizer"), False, str(out / "pretrained"),
                                                            str(work / f"reward-{n}"), seed, scale, progress,
                                                            threads))
                     for n in names]
        results = run_jobs(specs, jobs, _job_logger(log, t_start, names))
        qualities = dict(zip(names, results, strict=True))
        for n in names:
            _install(work / f"reward-{n}" / "final", out / "rewards" / n)
    seconds = round(time.perf_counter() - t_start, 1)
    manifest.setdefault("quality", {}).setdefault("rewards", {}).update(qualities)
    builds = manifest.setdefault("reward_builds", {})
    for name in qualities:
        builds[name] = {"seed": seed, "scale": scale, "seconds": seconds, "torch_threads": threads, "jobs": jobs}
    write_manifest(out, manifest)
    log(f"[build-defaults] reward models {sorted(qualities)} done in {seconds:.0f}s")
    return manifest
