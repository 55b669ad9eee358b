"""GPU throughput and memory of textenv's rollout and agents against a bare KV-cache loop, ``generate`` and TRL
(issue 11 item 7).

One process, two models, measured one after the other, each with every row side by side in alternating rounds
(the rows, the timing, the TRL peer and the statistics are those of :mod:`benchmarks.throughput`, reused here):

- ``gpt2-small``: a GPT-2-small body (``GPT2Config`` defaults: 12 x 768, 12 heads, 1024 positions), random
  init, full fine-tuning, batch 256, 32 prompt tokens, 64 new tokens, GRPO group 8.
- ``llama-1b-lora``: a Llama-3.2-1B-shaped config (16 layers, hidden 2048, 32 heads, 8 KV heads, MLP 8192,
  tied embeddings), random init, LoRA r=16 alpha=32 on every attention and MLP projection (``peft``), batch 64,
  32 prompt tokens, 64 new tokens, group 8.

Both in bfloat16 (weights cast to bf16; our rows run under ``torch.autocast``, TRL's with ``bf16=True``; peft
keeps the LoRA adapters in float32 on both sides). Vocabulary: the shipped tokenizer padded with placeholder
tokens to GPT-2's 50257 ids (``--vocab shipped`` keeps its own 1361), so the LM head and the softmax cost what a
real GPT-2 vocabulary costs: 124.4M parameters for ``gpt2-small``, 1.08B for ``llama-1b-lora``.

Rows per model (tokens/s are completion tokens per second of wall time): ``kv_limit`` (bare KV-cache loop),
``generate`` (``model.generate``, sampling at temperature 1, ``min_new_tokens`` = ``max_new_tokens``),
``rollout`` (``collect_rollout`` through ``TextGenVectorEnv``), ``train_limit``, ``ppo_iteration``,
``grpo_iteration`` and ``trl_grpo`` (TRL's ``GRPOTrainer`` on the same model directory, batch, group, lengths,
beta, learning rate and LoRA config). Memory: ``peak_gpu_mib`` per row (``torch.cuda.max_memory_allocated``
during its first run) and per model. Ratios: ``rollout_vs_generate`` (target >= 0.9), ``rollout_vs_kv_limit``,
``grpo_vs_trl_grpo`` (target >= 2), ``ppo_vs_trl_grpo``.

Writes ``benchmarks/results/gpu.json`` only in a full run on CUDA (or ``--json PATH``); ``--smoke`` and CPU runs
write into a new temporary directory unless ``--json`` names another file, and never over the committed result.

Usage::

    python -m benchmarks.gpu                                # the full run, on CUDA (meant to take under 8 minutes; not yet run)
    python -m benchmarks.gpu --device cpu --smoke           # tiny models, seconds: the test of the script

Where the bf16 and LoRA bits live (to switch to the project's own ``--dtype`` / ``lora_r`` flags after those
land): :func:`cast_model` and :func:`autocast` (bf16), :func:`lora_config` and :func:`apply_lora` (LoRA through
``peft`` directly on the HF model), used only by :meth:`GpuBench._load`, :meth:`GpuBench._policy`,
:meth:`GpuBench._trl_kwargs` and :meth:`GpuBench._wrap_autocast`. Our reference model is still a deep copy
of the policy (LoRA adapters included); TRL's, with peft, is the same model with the adapters disabled.

Running it on the device machine (the device tool's ``run``), from the repository root after the merge. The
machine has torch, transformers, accelerate and peft, but not gymnasium, stable-baselines3, trl, datasets,
dill or multiprocess; carry them as wheels (Python 3.12 there, about 2.4 MiB together)::

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \\
        -d .whl gymnasium==1.4.0 farama-notifications==0.0.6 stable-baselines3==2.9.2 trl==1.16.0 \\
        datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19

    run(carry=[".whl"], timeout_s=570, command=
      "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site
       .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit; python3 -m pip show pyarrow peft | grep -E
       '^(Name|Version)'; export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1; set -o pipefail; python3 -m benchmarks.gpu
       --json $OUT/gpu.json 2>&1 | tee $OUT/log")

(one line in the call). Then copy ``gpu.json`` from the reply's ``files_at`` to ``benchmarks/results/gpu.json``
and commit it with that command. datasets 5.2 needs pyarrow >= 24: if the device's is older the TRL row is
skipped with its reason in the JSON; then add a pyarrow wheel (``pyarrow==26.0.1``, about 45 MiB) to ``.whl``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import gc
import json
import os
import re
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from benchmarks import env_step
from benchmarks.throughput import (
    RESULTS_DIR,
    Bench,
    BenchConfig,
    Row,
    cheap_reward,
    fixed_length_prompts,
    load_model,
    set_threads,
    sync,
)
from benchmarks.throughput import versions as throughput_versions

RESULT_PATH = RESULTS_DIR / "gpu.json"
#: Targets of issue 11 item 7.
TARGET_ROLLOUT_VS_GENERATE = 0.9
TARGET_GRPO_VS_TRL_GRPO = 2.0
#: GPT-2's vocabulary size; ``--vocab gpt2`` pads the shipped tokenizer to it.
GPT2_VOCAB = 50257
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclasses.dataclass
class ModelSpec(BenchConfig):
    """One benchmark model: :class:`benchmarks.throughput.BenchConfig` plus the architecture and LoRA."""

    arch: str = "gpt2"  # "gpt2" or "llama"
    n_kv_head: int = 0  # llama: key/value heads (grouped-query attention)
    intermediate_size: int = 0  # llama: MLP width
    lora_r: int = 0  # 0: full fine-tuning
    lora_alpha: int = 0
    vocab: str = "gpt2"  # "gpt2": the shipped tokenizer padded to 50257 ids; "shipped": its own vocabulary


FULL: dict[str, ModelSpec] = {
    "gpt2-small": ModelSpec("gpt2-small", n_layer=12, n_embd=768, n_head=12, batch=256, prompt_tokens=32,
                            new_tokens=64, group_size=8, dtype="bfloat16", rounds=5),
    "llama-1b-lora": ModelSpec("llama-1b-lora", n_layer=16, n_embd=2048, n_head=32, batch=64, prompt_tokens=32,
                               new_tokens=64, group_size=8, dtype="bfloat16", rounds=5, arch="llama",
                               n_kv_head=8, intermediate_size=8192, lora_r=16, lora_alpha=32),
}
#: the same two shapes, tiny: seconds on a CPU, numbers meaningless (one with each vocabulary)
SMOKE: dict[str, ModelSpec] = {
    "gpt2-small": ModelSpec("gpt2-small", n_layer=1, n_embd=32, n_head=2, batch=4, prompt_tokens=4, new_tokens=4,
                            group_size=2, dtype="bfloat16", rounds=1, vocab="shipped"),
    "llama-1b-lora": ModelSpec("llama-1b-lora", n_layer=2, n_embd=64, n_head=4, batch=4, prompt_tokens=4,
                               new_tokens=4, group_size=2, dtype="bfloat16", rounds=1, arch="llama", n_kv_head=2,
                               intermediate_size=128, lora_r=4, lora_alpha=8, vocab="gpt2"),
}


# ------------------------------------------------------------------------------------------ bf16 (isolated)
def cast_model(model: Any, dtype: torch.dtype) -> Any:
    """The model's weights in ``dtype`` (after the merge: what ``--dtype`` does when loading)."""
    return model.to(dtype)


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` in ``dtype`` on ``device`` for a low-precision run, else nothing (after the merge:
    the agents' own autocast under ``--dtype bfloat16``)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# ------------------------------------------------------------------------------------------ LoRA (isolated)
LORA_TARGETS = {"llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                "gpt2": ["c_attn", "c_proj", "c_fc"]}


def lora_config(spec: ModelSpec) -> Any:
    """peft's ``LoraConfig`` of ``spec`` (the same object for ours and TRL's), or None without LoRA."""
    if spec.lora_r == 0:
        return None
    try:
        from peft import LoraConfig
    except ImportError as exc:
        raise RuntimeError(f"model {spec.name!r} uses LoRA (r={spec.lora_r}), which needs peft: "
                           f"pip install peft ({exc})") from None
    return LoraConfig(r=spec.lora_r, lora_alpha=spec.lora_alpha, lora_dropout=0.0,
                      target_modules=LORA_TARGETS[spec.arch], bias="none", task_type="CAUSAL_LM")


def apply_lora(model: Any, spec: ModelSpec) -> Any:
    """Inject ``spec``'s LoRA adapters into the HF model in place and freeze everything else; returns the same
    HF model object (not the ``PeftModel`` wrapper), so ``model.base_model`` is still the trunk that
    :class:`agents.policy.LMPolicy` and the KV-cache loop call. Adapters are float32 (peft's default for a
    bf16 base, as TRL gets). After the merge: the policy's ``lora_r`` config fields."""
    cfg = lora_config(spec)
    if cfg is None:
        return model
    from peft import get_peft_model

    get_peft_model(model, cfg)
    return model


# ------------------------------------------------------------------------------------------ set-up
def bench_tokenizer(vocab: str) -> Any:
    """The shipped tokenizer (``"shipped"``), or a copy padded with placeholder tokens ``<x0>``, ``<x1>``, ...
    to GPT-2's 50257 ids (``"gpt2"``): the model's LM head and softmax are then GPT-2-sized, and any id a
    random model samples still decodes."""
    if vocab not in ("gpt2", "shipped"):
        raise ValueError(f"vocab must be 'gpt2' or 'shipped', got {vocab!r}")
    tok = env_step.benchmark_tokenizer()
    if vocab == "shipped":
        return tok
    tok = copy.deepcopy(tok)  # benchmark_tokenizer() is cached: never change its object
    tok.add_tokens([f"<x{i}>" for i in range(GPT2_VOCAB - len(tok))])
    assert len(tok) == GPT2_VOCAB, len(tok)
    return tok


def build_model(spec: ModelSpec, tok: Any, device: torch.device) -> Any:
    """A randomly initialised model of ``spec`` sized for ``tok``, built on ``device`` (fast for 1B)."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    ids = {"bos_token_id": tok.eos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    n_pos = max(1024 if spec.arch == "gpt2" else 2048, spec.prompt_tokens + spec.new_tokens)
    torch.manual_seed(0)
    with torch.device(device):
        if spec.arch == "gpt2":  # GPT2Config's defaults, but the tokenizer's vocabulary
            return GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_layer=spec.n_layer, n_embd=spec.n_embd,
                                              n_head=spec.n_head, n_positions=n_pos, **ids))
        if spec.arch == "llama":
            return LlamaForCausalLM(LlamaConfig(
                vocab_size=len(tok), hidden_size=spec.n_embd, num_hidden_layers=spec.n_layer,
                num_attention_heads=spec.n_head, num_key_value_heads=spec.n_kv_head or spec.n_head,
                intermediate_size=spec.intermediate_size or 4 * spec.n_embd, max_position_embeddings=n_pos,
                tie_word_embeddings=True, **ids))
    raise ValueError(f"arch must be 'gpt2' or 'llama', got {spec.arch!r}")


def save_model(spec: ModelSpec, tok: Any, path: Path, device: torch.device) -> dict[str, Any]:
    """Build ``spec``'s model, save it (in its dtype) with ``tok`` into ``path``; returns its size."""
    model = cast_model(build_model(spec, tok, device), DTYPES[spec.dtype])
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    trainable = n_params
    if spec.lora_r:
        apply_lora(model, spec)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    del model
    return {"architecture": {"gpt2": "GPT-2", "llama": "Llama"}[spec.arch], "n_layer": spec.n_layer,
            "hidden": spec.n_embd, "n_head": spec.n_head, "n_kv_head": spec.n_kv_head or spec.n_head,
            "intermediate_size": spec.intermediate_size or 4 * spec.n_embd, "vocab_size": len(tok),
            "vocab": spec.vocab, "parameters": n_params, "trainable_parameters": trainable,
            "lora": ({"r": spec.lora_r, "alpha": spec.lora_alpha, "targets": LORA_TARGETS[spec.arch]}
                     if spec.lora_r else None), "dtype": spec.dtype}


# ------------------------------------------------------------------------------------------ the bench
class GpuBench(Bench):
    """:class:`benchmarks.throughput.Bench` on a :class:`ModelSpec` (GPT-2 or Llama, LoRA, bf16 with autocast),
    plus a ``generate`` row."""

    cfg: ModelSpec

    def __init__(self, spec: ModelSpec, device: torch.device, use_trl: bool = True,
                 workdir: Path | None = None) -> None:
        # Bench.__init__ with this module's tokenizer and model (the rest as there)
        self.cfg = spec
        self.device = device
        self.dtype = DTYPES[spec.dtype]
        self.tok = bench_tokenizer(spec.vocab)
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="textenv-gpu-"))
        self.model_dir = self.workdir / "model"
        B, G = spec.batch, spec.group_size
        if B % G:
            raise ValueError(f"group_size {G} must divide batch {B}")
        self.model_info = save_model(spec, self.tok, self.model_dir, device)
        self.prompts = fixed_length_prompts(self.tok, max(4 * B, 256), spec.prompt_tokens)
        self.reward_name = "cheap"
        self.reward: Any = cheap_reward
        self.rows: dict[str, Row] = {}
        self.trl_reason: str | None = None
        self._build_limit()
        self._build_generate()
        self._build_rollout()
        self._build_agents()
        self._wrap_autocast()  # ours only; TRL's autocast is its own (bf16=True)
        self.trl_trainer: Any = None
        if use_trl:
            self._build_trl()
        else:
            self.trl_reason = "skipped (--no-trl)"

    # -------------------------------------------------------------------- the hooks of Bench
    def _load(self) -> Any:
        return apply_lora(load_model(self.model_dir, self.device, self.dtype), self.cfg)

    def _policy(self, with_reference: bool) -> Any:
        from agents.policy import LMPolicy

        policy = LMPolicy(self._load(), self.tok, with_reference=with_reference).to(self.device)
        policy.value_head.to(self.dtype)  # the LM's dtype, not the LoRA adapters' (kept float32)
        return policy

    def _trl_kwargs(self) -> dict[str, Any]:
        cfg = lora_config(self.cfg)
        return {} if cfg is None else {"peft_config": cfg}

    def _wrap_autocast(self) -> None:
        for row in self.rows.values():
            def run(inner: Callable[[], float] = row.run) -> float:
                with autocast(self.device, self.dtype):
                    return inner()

            row.run = run

    # -------------------------------------------------------------------- running
    def run(self) -> None:
        """:meth:`Bench.run`; if TRL fails while training (a one-shot device run cannot be redone cheaply),
        its reason goes into the JSON and our rows are measured again without it."""
        if self.trl_trainer is None:
            super().run()
            return
        try:
            super().run()
        except Exception as exc:
            import trl

            self.trl_reason = (f"TRL {trl.__version__} GRPOTrainer failed while training: {type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''}")[:500]
            print(f"{self.cfg.name}: {self.trl_reason}; measuring our rows without it", flush=True)
            self.rows.pop("trl_grpo", None)
            self.trl_trainer = None
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            for row in self.rows.values():
                row.seconds.clear()
                row.extra.clear()
            super().run()  # our rows fail here too if the error was ours: then it propagates

    # -------------------------------------------------------------------- the generate row
    def _build_generate(self) -> None:
        cfg, dev = self.cfg, self.device
        model = self._load()  # stock HF model (no fused activations), with the same LoRA adapters
        backend = self.tok.backend_tokenizer
        enc = [backend.encode(p, add_special_tokens=False).ids for p in self.prompts]
        B, P, T = cfg.batch, cfg.prompt_tokens, cfg.new_tokens
        state = {"i": 0}

        def run() -> float:
            start = (state["i"] * B) % (len(enc) - B + 1)
            state["i"] += 1
            ids = torch.tensor(enc[start:start + B], dtype=torch.long, device=dev)  # (B, P)
            mask = torch.ones_like(ids)
            sync(dev)
            t0 = time.perf_counter()
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, max_new_tokens=T,
                                     min_new_tokens=T, temperature=1.0, top_k=0, top_p=1.0,
                                     pad_token_id=self.tok.pad_token_id, eos_token_id=self.tok.eos_token_id)
            sync(dev)
            dt = time.perf_counter() - t0
            assert out.shape == (B, P + T), f"generate gave {tuple(out.shape)}, expected {(B, P + T)}"
            return dt

        self.rows["generate"] = Row("generate", "transformers model.generate (sampling, temperature 1, "
                                    "min_new_tokens = max_new_tokens, its default dynamic cache)", B * T, run)

    # -------------------------------------------------------------------- results
    def results(self) -> dict[str, Any]:
        out = super().results()
        med = statistics.median

        def ratio(num: str, den: str) -> float | None:
            a, b = self.rows[num].seconds if num in self.rows else [], self.rows[den].seconds if den in self.rows else []
            return med(d / n for n, d in zip(a, b)) if a and b else None

        out["rollout_vs_generate"] = ratio("rollout", "generate")
        out["generate_vs_kv_limit"] = med(d / n for n, d in zip(self.rows["generate"].seconds,
                                                                 self.rows["limit"].extra["decode_s"]))
        out["ppo_vs_trl_grpo"] = ratio("ppo_iteration", "trl_grpo")
        gpu = [r["peak_gpu_mib"] for r in out["rows"].values() if r.get("peak_gpu_mib")]
        out["peak_gpu_mib"] = max(gpu) if gpu else None
        return out


# ------------------------------------------------------------------------------------------ running
def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda[:N]``; a clear error otherwise."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise ValueError(f"--device must be auto, cpu or cuda[:N], got {name!r}")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name!r}: CUDA is not available here (torch {torch.__version__})")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name!r}: only {torch.cuda.device_count()} CUDA device(s)")
    return dev


def pick_specs(names: list[str], smoke: bool, dtype: str | None, rounds: int | None) -> list[ModelSpec]:
    table = SMOKE if smoke else FULL
    specs = []
    for name in names:
        if name not in table:
            raise ValueError(f"--models: unknown model {name!r} (known: {', '.join(table)})")
        spec = copy.deepcopy(table[name])
        if dtype is not None:
            spec.dtype = dtype
        if rounds is not None:
            spec.rounds = rounds
        specs.append(spec)
    return specs


def output_path(json_path: Path | None, device: torch.device, smoke: bool) -> Path | None:
    """Where the JSON goes: ``--json``, else the committed result (full CUDA runs only), else None (a new
    temporary directory). A smoke or CPU run never writes the committed result."""
    full_cuda = device.type == "cuda" and not smoke
    if json_path is not None:
        if not full_cuda and json_path.resolve() == RESULT_PATH.resolve():
            raise ValueError(f"--json {str(json_path)!r}: only a full run on CUDA writes the committed result "
                             f"(this is a {'smoke' if smoke else device.type} run)")
        return json_path
    return RESULT_PATH if full_cuda else None


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` through a temporary name in the same directory, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(data, indent=2, default=_json_default) + "\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _json_default(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


@contextlib.contextmanager
def _freed(device: torch.device) -> Iterator[None]:
    """Free what a model's bench held before the next one, and reset the peak counters."""
    try:
        yield
    finally:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)


def measure_model(spec: ModelSpec, device: torch.device, use_trl: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    with _freed(device), tempfile.TemporaryDirectory(prefix="textenv-gpu-") as workdir:
        bench = GpuBench(spec, device, use_trl=use_trl, workdir=Path(workdir))
        built = time.perf_counter() - t0
        bench.run()
        res = bench.results()
        model_info = bench.model_info
        trl_model = type(getattr(bench.trl_trainer, "model", None)).__name__ if bench.trl_trainer else None
        del bench
    res_rows = res.pop("rows")
    return {"config": {**dataclasses.asdict(spec), "completion_tokens_per_run": spec.batch * spec.new_tokens,
                       "reward_model": "cheap callable (share of 'e' in the completion), the same for ours and TRL",
                       "prompts": f"{spec.prompt_tokens} tokens each (fixed length), cut from the tasks' prompts",
                       "terminate_on_eos": False, "autocast": spec.dtype != "float32",
                       "reference": "ours: a deep copy of the policy (adapters included); TRL with peft: the "
                                    "same model with the adapters disabled" if spec.lora_r else
                                    "a deep copy of the policy (ours and TRL's)",
                       "statistic": "median over rounds; ratios are medians of per-round ratios"},
            "model": model_info, "trl_model_class": trl_model, **res, "rows": res_rows, "build_s": built,
            "wall_s": time.perf_counter() - t0}


def run_benchmark(models: list[str], device: str = "auto", smoke: bool = False, dtype: str | None = None,
                  rounds: int | None = None, use_trl: bool = True, json_path: Path | None = None,
                  command: str | None = None) -> tuple[dict[str, Any], Path]:
    """Measure every model in ``models`` one after the other; returns the result and where it was written."""
    dev = resolve_device(device)
    specs = pick_specs(models, smoke, dtype, rounds)
    path = output_path(json_path, dev, smoke)
    t0 = time.perf_counter()
    results = {}
    failed = []
    for spec in specs:
        print(f"--- {spec.name} ...", flush=True)
        try:
            results[spec.name] = measure_model(spec, dev, use_trl)
        except Exception as exc:  # keep the other model's figures: the run is one-shot on a lent device
            if smoke:
                raise
            failed.append(spec.name)
            results[spec.name] = {"config": dataclasses.asdict(spec),
                                  "error": f"{type(exc).__name__}: {str(exc)[:1000]}"}
            traceback.print_exc()
            print(f"{spec.name}: FAILED ({type(exc).__name__}); going on", flush=True)
            continue
        print(report_model(spec.name, results[spec.name]), flush=True)
    v = throughput_versions()
    try:
        import peft

        v["peft"] = peft.__version__
    except ImportError:
        v["peft"] = "not importable"
    result: dict[str, Any] = {
        "device": dev.type,
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "smoke": smoke,
        "command": command,
        "targets": {"rollout_vs_generate": TARGET_ROLLOUT_VS_GENERATE, "grpo_vs_trl_grpo": TARGET_GRPO_VS_TRL_GRPO},
        "models": results,
        "versions": v,
        "torch_threads": torch.get_num_threads(),
        "wall_s": time.perf_counter() - t0,
        "failed": failed,
    }
    if path is None:
        path = Path(tempfile.mkdtemp(prefix="textenv-gpu-")) / "gpu.json"
    write_json(path, result)
    print(f"wrote {path}")
    return result, path


def report_model(name: str, r: dict[str, Any]) -> str:
    c = r["config"]
    lines = [f"{name}: batch {c['batch']}, prompts {c['prompt_tokens']}, new tokens {c['new_tokens']}, "
             f"group {c['group_size']}, {c['dtype']}, {c['rounds']} rounds (built in {r['build_s']:.0f} s, "
             f"{r['wall_s']:.0f} s in all)"]
    for row_name, row in r["rows"].items():
        mem = f"  peak GPU {row['peak_gpu_mib']:.0f} MiB" if row.get("peak_gpu_mib") else ""
        lines.append(f"  {row_name:16s} {row['tokens_per_s']:10.0f} tok/s  {row['seconds']:7.3f} s/run{mem}")

    def fmt(x: Any) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    lines += [f"  rollout_vs_generate {fmt(r['rollout_vs_generate'])} (target >= {TARGET_ROLLOUT_VS_GENERATE}), "
              f"rollout_vs_kv_limit {fmt(r['rollout_vs_kv_limit'])}, "
              f"grpo_vs_trl_grpo {fmt(r['grpo_vs_trl_grpo'])} (target >= {TARGET_GRPO_VS_TRL_GRPO})"
              + (f" [{r['grpo_vs_trl_grpo_reason']}]" if r.get("grpo_vs_trl_grpo_reason") else "")
              + f", ppo_vs_trl_grpo {fmt(r['ppo_vs_trl_grpo'])}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:N]")
    parser.add_argument("--smoke", action="store_true", help="tiny models, one round: seconds (the test)")
    parser.add_argument("--models", default=",".join(FULL), help=f"comma-separated, of: {', '.join(FULL)}")
    parser.add_argument("--dtype", default=None, help="bfloat16 (the default) or float32")
    parser.add_argument("--rounds", default=None, help="timed rounds per model (default 5; 1 with --smoke)")
    parser.add_argument("--no-trl", action="store_true", help="skip TRL's GRPOTrainer")
    parser.add_argument("--json", type=Path, default=None,
                        help="default: benchmarks/results/gpu.json in a full CUDA run, else a temporary directory")
    parser.add_argument("--threads", default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args(argv)
    try:
        if args.dtype is not None and args.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {args.dtype!r}")
        rounds = None
        if args.rounds is not None:
            if not re.fullmatch(r"\d+", args.rounds) or int(args.rounds) < 1:
                raise ValueError(f"--rounds must be an integer >= 1, got {args.rounds!r}")
            rounds = int(args.rounds)
        if args.threads is not None:
            if not re.fullmatch(r"\d+", args.threads) or int(args.threads) < 1:
                raise ValueError(f"--threads must be an integer >= 1, got {args.threads!r}")
            set_threads(int(args.threads))
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        if not models:
            raise ValueError(f"--models names no model: {args.models!r}")
        # checked before anything is built, so a bad flag costs no device time
        resolve_device(args.device)
        pick_specs(models, args.smoke, args.dtype, rounds)
        output_path(args.json, resolve_device(args.device), args.smoke)
    except ValueError as exc:
        print(f"benchmarks.gpu: error: {exc}", file=sys.stderr)
        return 2
    from textenv.models import quiet_progress

    command = "python -m benchmarks.gpu " + " ".join(sys.argv[1:] if argv is None else argv)
    with quiet_progress():  # restored after: main() also runs in-process (the smoke test)
        result, _ = run_benchmark(models, device=args.device, smoke=args.smoke, dtype=args.dtype, rounds=rounds,
                                  use_trl=not args.no_trl, json_path=args.json, command=command.strip())
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
