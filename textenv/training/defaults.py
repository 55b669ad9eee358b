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
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
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
    import torch

    from textenv.decoding import sample_tokens

    def sample(logits: torch.Tensor) -> torch.Tensor:
        return torch.multinomial(torch.softmax(logits.float(), -1), 1, generator=generator).squeeze(-1)

    texts: list[str] = []
    model.eval()
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        ids, attn = _left_padded([tokenizer(p, add_special_tokens=False)["input_ids"] for p in chunk],
                                 tokenizer.pad_token_id)
        outs = sample_tokens(model, ids, attn, max_new_tokens, sample, tokenizer.eos_token_id)
        texts += [tokenizer.decode(o, skip_special_tokens=True) for o in outs]
    return texts


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
    import torch

    from textenv.decoding import sample_tokens

    def sample(logits: torch.Tensor) -> torch.Tensor:
        return torch.multinomial(torch.softmax(logits.float(), -1), 1, generator=generator).squeeze(-1)

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


def build_defaults(out_dir: str | os.PathLike[str] | None = None, seed: int = 0, scale: float = 1.0,
                   progress: bool = True, log: Any = print, tasks: Sequence[str] | None = None) -> dict[str, Any]:
    """Rebuild the shipped artifacts into ``out_dir`` (default: the package's ``textenv/data``), for the
    tasks ``tasks`` (default ``RECIPE["tasks"]``): their corpora train the tokenizer and both LMs, and each
    gets a reward model.

    Returns the manifest it writes to ``out_dir/MANIFEST.json``.
    """
    import torch
    from transformers import GPT2LMHeadModel

    from textenv.models import tiny_gpt2_config
    from textenv.training.lm import finetune, pretrain
    from textenv.training.loop import TrainConfig
    from textenv.training.tokenizer import train_tokenizer

    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale!r}")
    out = Path(out_dir) if out_dir is not None else DATA_DIR
    out.mkdir(parents=True, exist_ok=True)
    R = RECIPE
    t_start = time.perf_counter()
    torch.manual_seed(seed)
    task_objs = [get_task(n) for n in check_task_names(tasks)]
    manifest: dict[str, Any] = {"seed": seed, "scale": scale, "recipe": {**R, "tasks": [t.name for t in task_objs]},
                                "artifacts": {}, "quality": {}, "versions": {"torch": torch.__version__},
                                "torch_threads": torch.get_num_threads()}
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

        # 3. fine-tuning
        n_sft = _scaled(R["sft_pairs_per_task"], scale, 200)
        pairs = _mixed([t.sft_pairs(n_sft * R["sft_task_weight"].get(t.name, 1), seed=seed + 4) for t in task_objs],
                       seed + 4)
        eval_pairs = [pr for t in task_objs for pr in t.sft_pairs(n_eval, seed=seed + 5, split="test")]
        steps = _scaled(R["sft_steps"], scale, 4)
        sft = finetune(model, tokenizer, pairs, work / "sft", TrainConfig(
            steps=steps, batch_size=R["sft_batch"], lr=R["sft_lr"], warmup_steps=max(1, steps // 20),
            max_length=R["model"]["n_positions"], eval_every=0, checkpoint_every=0, seed=seed + 1, progress=progress,
            group_by_length=R["group_by_length"]), eval_pairs=eval_pairs)
        _final_model_files(work / "sft", work / "policy")
        gold = policy_gold_scores(model, tokenizer, _scaled(R["policy_eval_prompts"], scale, 16), seed,
                                  tasks=[t.name for t in task_objs])
        _install(work / "policy", out / "policy")
        manifest["quality"]["policy"] = {"sft_eval_loss": sft["eval_loss"], "sft_perplexity": sft["perplexity"],
                                         "gold_score_at_temperature_1": gold}
        log(f"[build-defaults] policy: gold {gold} ({time.perf_counter() - t_start:.0f}s)")

        # 4. reward models
        manifest["quality"]["rewards"] = _build_reward_models(task_objs, out, work, tokenizer, seed, scale, progress,
                                                              log, t_start)

    manifest["build_seconds"] = round(time.perf_counter() - t_start, 1)
    write_manifest(out, manifest)
    log(f"[build-defaults] done in {manifest['build_seconds']:.0f}s, {manifest['total_bytes'] / 1e6:.1f} MB")
    return manifest


def _build_reward_models(tasks: list[Any], out: Path, work: Path, tokenizer: Any, seed: int, scale: float,
                         progress: bool, log: Any, t_start: float) -> dict[str, Any]:
    """Train, evaluate and install ``out/rewards/<task>`` for each task; returns each one's quality."""
    from textenv.rewards import load_reward_model
    from textenv.training.reward import build_default_reward_model, evaluate_reward_model

    qualities: dict[str, Any] = {}
    for t in tasks:
        rm_dir = work / "rewards" / t.name
        steps_rm = None if scale >= 1.0 else _scaled(400, scale * 10, 4)
        build_default_reward_model(t, rm_dir, tokenizer=tokenizer, seed=seed, steps=steps_rm, progress=progress,
                                   pretrained=out / "pretrained",
                                   n_train=None if scale >= 1.0 else _scaled(20_000, scale, 200))

        quality = evaluate_reward_model(load_reward_model(rm_dir), t, n=_scaled(1000, scale, 64), seed=seed + 9)
        qualities[t.name] = quality
        _final_model_files(rm_dir, work / "rewards-final" / t.name)  # not its checkpoints
        _install(work / "rewards-final" / t.name, out / "rewards" / t.name)
        log(f"[build-defaults] reward model {t.name}: {quality} ({time.perf_counter() - t_start:.0f}s)")
    return qualities


def build_reward_models(tasks: Sequence[str], out_dir: str | os.PathLike[str] | None = None, seed: int = 0,
                        scale: float = 1.0, progress: bool = True, log: Any = print) -> dict[str, Any]:
    """Build only the reward models of ``tasks`` (``textenv build-defaults --rewards-only``) against the
    tokenizer and pretrained LM already in ``out_dir`` (default: the package's ``textenv/data``), and merge
    them into its ``MANIFEST.json`` (each one's quality, and a ``reward_builds`` entry with its seed, scale
    and seconds). The tokenizer, the LMs and the other reward models are left as they are.

    This is how a task registered after the last full build gets a shipped reward model without a full
    rebuild; after a full rebuild that changes the tokenizer, every reward model is rebuilt anyway.

    Returns the manifest it writes.
    """
    import torch
    from transformers import AutoTokenizer

    from textenv.models import ModelLoadError

    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale!r}")
    task_objs = [get_task(n) for n in check_task_names(tasks)]
    out = Path(out_dir) if out_dir is not None else DATA_DIR
    for sub in ("tokenizer", "pretrained"):
        if not (out / sub).is_dir():
            raise ModelLoadError(f"{str(out / sub)!r} is missing: --rewards-only builds on a full build's tokenizer "
                                 f"and pretrained LM; run `textenv build-defaults` first")
    manifest_path = out / "MANIFEST.json"
    manifest: dict[str, Any] = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    t_start = time.perf_counter()
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    with tempfile.TemporaryDirectory(prefix="textenv-build-") as work_s:
        qualities = _build_reward_models(task_objs, out, Path(work_s), tokenizer, seed, scale, progress, log, t_start)
    seconds = round(time.perf_counter() - t_start, 1)
    manifest.setdefault("quality", {}).setdefault("rewards", {}).update(qualities)
    builds = manifest.setdefault("reward_builds", {})
    for name in qualities:
        builds[name] = {"seed": seed, "scale": scale, "seconds": seconds,
                        "torch_threads": torch.get_num_threads()}
    write_manifest(out, manifest)
    log(f"[build-defaults] reward models {sorted(qualities)} done in {seconds:.0f}s")
    return manifest
