"""Peak memory (RSS) of one GRPO iteration and of the log-prob step, each measured in a fresh process.

Issue 11 item 6. Two measurements, every case in its own subprocess (``python -m benchmarks.memory --case
NAME``) so that no allocation of one case stays in the next one's peak:

- **GRPO iteration** of a Llama-style policy, random init (``--layers``/``--hidden``/``--intermediate``:
  ~0.49B parameters at the defaults), the shipped tokenizer's vocabulary, batch 8 (2 prompts x group 4), 64
  new tokens, a zero reward (so the policy is all that is measured), AdamW, one ``agent.learn(8)``:
  ``full`` (full fine-tuning: weights, the reference copy, gradients, AdamW's two moments), ``gc``
  (``gradient_checkpointing=True``), ``lora`` (``lora_r=16``: the reference is the adapter-disabled base, no
  copy; gradients and AdamW state only for the adapter and value head) and ``lora_gc`` (both).
- **log-prob step** at a 151936-token vocabulary (Qwen2's head; hidden 896, 8 x 128 completion tokens): the
  LM head, log-softmax, gather and entropy, forward and backward, as :func:`agents.policy.chunked_logps_entropy`
  computes it with the default chunks (``chunked``: 110 tokens of logits at a time) and as one chunk
  (``unchunked``: the whole ``(B, T, V)`` float32 logits, as before issue 11).

Reported per case: ``peak_rss_mib`` (the process's VmHWM, from ``/proc/self/status``; ``ru_maxrss`` where
that is missing), ``baseline_rss_mib`` (RSS once the model/inputs are built, before the measured step) and
``step_peak_over_baseline_mib`` (the peak of the step itself: VmHWM is reset through ``/proc/self/clear_refs``
after the setup where the kernel allows it, else it is peak minus baseline). Ratios are stated against
``full`` and ``unchunked``.

Usage::

    python -m benchmarks.memory                       # full run (~5-8 min on 2 cores), writes
                                                      # benchmarks/results/memory-cpu.json
    python -m benchmarks.memory --smoke --json /tmp/memory.json   # tiny sizes, a few seconds per case;
                                                      # never writes the committed results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "memory-cpu.json"
GRPO_CASES = {"full": {}, "gc": {"gradient_checkpointing": True}, "lora": {"lora_r": 16},
              "lora_gc": {"lora_r": 16, "gradient_checkpointing": True}}
LOGPROB_CASES = ("unchunked", "chunked")
#: full-size settings (the issue's) and the smoke-test ones
FULL: dict[str, Any] = {"layers": 24, "hidden": 1280, "intermediate": 3584, "heads": 20, "batch": 8, "group": 4,
                        "new_tokens": 64, "vocab": 151936, "lp_hidden": 896, "lp_batch": 8, "lp_tokens": 128}
SMOKE: dict[str, Any] = {"layers": 2, "hidden": 64, "intermediate": 128, "heads": 4, "batch": 4, "group": 2,
                         "new_tokens": 8, "vocab": 5000, "lp_hidden": 32, "lp_batch": 2, "lp_tokens": 16}


def _status_mib(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def peak_rss_mib() -> float:
    """The process's peak resident set (VmHWM), MiB."""
    hwm = _status_mib("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    rss = _status_mib("VmRSS")
    return rss if rss is not None else peak_rss_mib()


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux: ``echo 5 > /proc/self/clear_refs``); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def zero_reward(prompts: list[str], completions: list[str]) -> list[float]:
    return [0.0] * len(completions)


# ---------------------------------------------------------------------------------------------- one case
def run_grpo_case(name: str, s: dict[str, Any]) -> dict[str, Any]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from agents import GRPO
    from agents.policy import LMPolicy
    from textenv.models import load_tokenizer

    tok = load_tokenizer("default")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=s["hidden"], intermediate_size=s["intermediate"],
                      num_hidden_layers=s["layers"], num_attention_heads=s["heads"], num_key_value_heads=s["heads"],
                      max_position_embeddings=256, tie_word_embeddings=False, bos_token_id=tok.eos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg).eval()
    n_params = sum(p.numel() for p in model.parameters())
    settings = GRPO_CASES[name]
    # with LoRA the agent would drop a reference copy: do not make one (as Agent does for a named policy)
    policy = LMPolicy(model, tok, with_reference="lora_r" not in settings)
    agent = GRPO("TextGen-v0", policy=policy, batch_size=s["batch"], group_size=s["group"], device="cpu",
                 env_kwargs={"reward_model": zero_reward, "max_new_tokens": s["new_tokens"]}, **settings)
    trainable = sum(p.numel() for p in agent.policy.parameters() if p.requires_grad)
    baseline = rss_mib()
    cleared = reset_peak()
    t0 = time.perf_counter()
    agent.learn(s["batch"], progress=False)
    seconds = time.perf_counter() - t0
    peak = peak_rss_mib()
    m = agent.history[-1]
    return {"case": name, "settings": settings, "params": n_params, "trainable_params": trainable,
            "completion_tokens_mean": m.get("completions/mean_length"), "peak_rss_mib": peak,
            "baseline_rss_mib": baseline, "step_peak_over_baseline_mib": peak - baseline,
            "peak_reset_before_step": cleared, "iteration_s": seconds}


def run_logprob_case(name: str, s: dict[str, Any]) -> dict[str, Any]:
    import torch

    from agents.policy import chunked_logps_entropy

    torch.manual_seed(0)
    B, T, V, H = s["lp_batch"], s["lp_tokens"], s["vocab"], s["lp_hidden"]
    head = torch.nn.Linear(H, V, bias=False)
    h = torch.randn(B, T, H, requires_grad=True)
    tokens = torch.randint(0, V, (B, T))
    chunk = B * T if name == "unchunked" else None  # None: the default, LOGITS_CHUNK_ELEMENTS // V tokens
    baseline = rss_mib()
    cleared = reset_peak()
    t0 = time.perf_counter()
    logp, entropy = chunked_logps_entropy(h, tokens, head, chunk_tokens=chunk)
    (logp.sum() + 0.01 * entropy.sum()).backward()
    seconds = time.perf_counter() - t0
    peak = peak_rss_mib()
    from agents.policy import LOGITS_CHUNK_ELEMENTS

    return {"case": name, "B": B, "T": T, "V": V, "H": H,
            "chunk_tokens": B * T if chunk else max(1, LOGITS_CHUNK_ELEMENTS // V),
            "full_logits_mib": B * T * V * 4 / 2**20, "peak_rss_mib": peak, "baseline_rss_mib": baseline,
            "step_peak_over_baseline_mib": peak - baseline, "peak_reset_before_step": cleared, "step_s": seconds}


def run_case(kind: str, name: str, sizes: dict[str, Any], threads: int) -> dict[str, Any]:
    """``kind`` "grpo"/"logprob" case ``name`` in a fresh subprocess; its result dict."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                       os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "benchmarks.memory", "--case", f"{kind}:{name}", "--sizes", json.dumps(sizes),
           "--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"case {kind}:{name} failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(sizes: dict[str, Any], threads: int = 2, cases: list[str] | None = None) -> dict[str, Any]:
    """Every case (or those named ``grpo:NAME`` / ``logprob:NAME`` in ``cases``), with the ratios."""
    wanted = cases or [f"grpo:{n}" for n in GRPO_CASES] + [f"logprob:{n}" for n in LOGPROB_CASES]
    out: dict[str, Any] = {"grpo": {}, "logprob": {}}
    for spec in wanted:
        kind, name = spec.split(":")
        print(f"[memory] {spec} ...", file=sys.stderr, flush=True)
        out[kind][name] = r = run_case(kind, name, sizes, threads)
        print(f"[memory] {spec}: peak {r['peak_rss_mib']:.0f} MiB, step {r['step_peak_over_baseline_mib']:.0f} MiB "
              f"over a {r['baseline_rss_mib']:.0f} MiB baseline", file=sys.stderr, flush=True)
    ratios: dict[str, float] = {}
    g, lp = out["grpo"], out["logprob"]
    for name in GRPO_CASES:
        if name != "full" and name in g and "full" in g:
            ratios[f"grpo_peak_{name}_over_full"] = g[name]["peak_rss_mib"] / g["full"]["peak_rss_mib"]
            ratios[f"grpo_step_{name}_over_full"] = (g[name]["step_peak_over_baseline_mib"]
                                                     / g["full"]["step_peak_over_baseline_mib"])
    if "chunked" in lp and "unchunked" in lp:
        ratios["logprob_peak_chunked_over_unchunked"] = lp["chunked"]["peak_rss_mib"] / lp["unchunked"]["peak_rss_mib"]
        ratios["logprob_step_chunked_over_unchunked"] = (lp["chunked"]["step_peak_over_baseline_mib"]
                                                         / lp["unchunked"]["step_peak_over_baseline_mib"])
    out["ratios"] = ratios
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes; writes only to --json")
    ap.add_argument("--json", type=Path, default=None, help=f"where to write (default, full runs only: {RESULTS})")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per case")
    ap.add_argument("--cases", nargs="*", default=None, help="grpo:full grpo:gc grpo:lora grpo:lora_gc "
                                                              "logprob:unchunked logprob:chunked (default: all)")
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)  # one case, in the subprocess
    ap.add_argument("--sizes", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.threads < 1:
        ap.error(f"--threads must be >= 1, got {a.threads}")
    import torch

    torch.set_num_threads(a.threads)
    if a.case is not None:
        kind, name = a.case.split(":")
        sizes = json.loads(a.sizes)
        r = run_grpo_case(name, sizes) if kind == "grpo" else run_logprob_case(name, sizes)
        print(json.dumps(r))
        return 0
    for spec in a.cases or []:
        kind, _, name = spec.partition(":")
        if name not in (GRPO_CASES if kind == "grpo" else LOGPROB_CASES if kind == "logprob" else ()):
            ap.error(f"unknown case {spec!r}")
    sizes = SMOKE if a.smoke else FULL
    t0 = time.perf_counter()
    result = measure(sizes, a.threads, a.cases)
    result.update({
        "command": "python -m benchmarks.memory" + (" --smoke" if a.smoke else "")
                   + (f" --threads {a.threads}" if a.threads != 2 else ""),
        "smoke": a.smoke, "sizes": sizes, "threads": a.threads, "wall_s": time.perf_counter() - t0,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "python": platform.python_version()},
    })
    out = a.json if a.json is not None else (None if a.smoke else RESULTS)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        tmp.replace(out)
    print(json.dumps(result["ratios"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
