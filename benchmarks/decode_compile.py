"""Does a static KV cache, or ``torch.compile`` of the decode step, pay for our rollouts? Measured both ways.

Three decode loops over the same model, batch, left-padded prompts and lengths, sampling from the same
logits (fused GELU as in :class:`agents.policy.LMPolicy`), timed side by side, rotating the order between
rounds, median tokens/s over rounds:

- ``eager_dynamic``: what the rollout runs, :class:`textenv.decoding.KVDecoder` (a ``DynamicCache`` that
  grows by one column per step, the attention mask concatenated each step);
- ``eager_static``: a transformers ``StaticCache`` preallocated to ``P + T`` columns, a preallocated
  ``(B, P + T)`` attention mask whose next column is set to 1 each step, ``cache_position`` given, eager;
- ``compiled_static``: the same step under ``torch.compile`` (default mode; fixed shapes, so one graph).
  Its compile time is reported apart (``compile_s``), not counted in tokens/s.

Writes ``benchmarks/results/decode-compile-<device>.json`` (``--json PATH`` elsewhere); ``--smoke`` runs a
tiny model for a few steps and writes only with ``--json``.

Usage::

    python -m benchmarks.decode_compile            # the committed result (CPU: minutes)
    python -m benchmarks.decode_compile --smoke
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from benchmarks.report import finish, load_average, spread


def _model(n_layer: int, n_embd: int, device: torch.device, dtype: torch.dtype) -> Any:
    from transformers import GPT2LMHeadModel

    from agents.policy import fuse_activations
    from textenv.models import load_tokenizer, tiny_gpt2_config

    tok = load_tokenizer("default")
    torch.manual_seed(0)
    cfg = tiny_gpt2_config(len(tok), n_layer=n_layer, n_embd=n_embd, n_head=max(1, n_embd // 64),
                           n_positions=256, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                           bos_token_id=tok.eos_token_id)
    return fuse_activations(GPT2LMHeadModel(cfg)).to(device=device, dtype=dtype).eval()


def _prompts(B: int, P: int, V: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V, (B, P), generator=g)
    lengths = torch.randint(max(1, P // 2), P + 1, (B,), generator=g)
    mask = (torch.arange(P)[None, :] >= (P - lengths)[:, None]).long()  # left padding
    return ids.masked_fill(mask == 0, 0).to(device), mask.to(device)


def _sample(logits: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    from textenv.decoding import sample_categorical

    return sample_categorical(torch.log_softmax(logits.float(), -1), g)


@torch.no_grad()
def eager_dynamic(model: Any, ids: torch.Tensor, mask: torch.Tensor, T: int, seed: int) -> torch.Tensor:
    from textenv.decoding import KVDecoder

    g = torch.Generator(device=ids.device).manual_seed(seed)
    dec = KVDecoder(model)
    out = dec.start(ids, mask)
    tok = _sample(out.logits[:, -1], g)
    toks = [tok]
    for _ in range(T - 1):
        out = dec.step(tok)
        tok = _sample(out.logits[:, -1], g)
        toks.append(tok)
    return torch.stack(toks, 1)


class StaticDecoder:
    """A decode loop on a preallocated ``StaticCache`` and attention mask (fixed shapes per step)."""

    def __init__(self, model: Any, B: int, max_len: int, compiled: bool) -> None:
        from transformers import StaticCache

        from textenv.decoding import cache_arg_name

        self.model, self.max_len = model, max_len
        self.cache = StaticCache(config=model.config, max_cache_len=max_len)
        self.arg = cache_arg_name(model)
        self.step_fn = torch.compile(self._step, dynamic=False) if compiled else self._step

    def _forward(self, ids: torch.Tensor, attn: torch.Tensor, pos: torch.Tensor, cache_pos: torch.Tensor) -> Any:
        return self.model(input_ids=ids, attention_mask=attn, position_ids=pos, cache_position=cache_pos,
                          use_cache=True, **{self.arg: self.cache}).logits

    def _step(self, tok: torch.Tensor, attn: torch.Tensor, pos: torch.Tensor, cache_pos: torch.Tensor) -> torch.Tensor:
        return self._forward(tok[:, None], attn, pos[:, None], cache_pos)[:, -1]

    @torch.no_grad()
    def run(self, ids: torch.Tensor, mask: torch.Tensor, T: int, seed: int) -> torch.Tensor:
        from textenv.decoding import positions_from_mask

        g = torch.Generator(device=ids.device).manual_seed(seed)
        self.cache.reset()
        B, P = ids.shape
        attn = torch.zeros(B, self.max_len, dtype=torch.long, device=ids.device)
        attn[:, :P] = mask
        pos = positions_from_mask(mask)
        logits = self._forward(ids, attn, pos, torch.arange(P, device=ids.device))[:, -1]
        tok = _sample(logits, g)
        toks = [tok]
        last = pos[:, -1]
        for t in range(T - 1):
            col = P + t
            attn[:, col] = 1
            last = last + 1
            logits = self.step_fn(tok, attn, last, torch.tensor([col], device=ids.device))
            tok = _sample(logits, g)
            toks.append(tok)
        return torch.stack(toks, 1)


def measure(n_layer: int = 4, n_embd: int = 256, batch: int = 64, prompt_tokens: int = 8, new_tokens: int = 32,
            rounds: int = 5, device: str = "cpu", dtype: str = "float32") -> dict[str, Any]:
    from textenv.models import resolve_device, resolve_dtype

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    model = _model(n_layer, n_embd, dev, dt)
    ids, mask = _prompts(batch, prompt_tokens, model.config.vocab_size, dev)
    max_len = prompt_tokens + new_tokens
    static = StaticDecoder(model, batch, max_len, compiled=False)
    compiled = StaticDecoder(model, batch, max_len, compiled=True)
    # same tokens from the same seed: the static loops decode what the dynamic one does (to float rounding)
    ref = eager_dynamic(model, ids, mask, new_tokens, 0)
    agree_static = float((static.run(ids, mask, new_tokens, 0) == ref).float().mean())
    t0 = time.perf_counter()
    agree_compiled = float((compiled.run(ids, mask, new_tokens, 0) == ref).float().mean())  # compiles here
    compile_s = time.perf_counter() - t0
    rows = {"eager_dynamic": lambda s: eager_dynamic(model, ids, mask, new_tokens, s),
            "eager_static": lambda s: static.run(ids, mask, new_tokens, s),
            "compiled_static": lambda s: compiled.run(ids, mask, new_tokens, s)}
    names = list(rows)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            rows[n](1 + r)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times[n].append(time.perf_counter() - t)
    tps = {n: batch * new_tokens / statistics.median(v) for n, v in times.items()}
    return {
        "tokens_per_s": {n: round(v, 1) for n, v in tps.items()},
        "vs_eager_dynamic": {n: round(v / tps["eager_dynamic"], 3) for n, v in tps.items()},
        # per round: eager_dynamic's seconds / the row's seconds, the same ratio measured side by side
        "vs_eager_dynamic_spread": {n: spread([e / t for e, t in zip(times["eager_dynamic"], v, strict=True)])
                                    for n, v in times.items() if n != "eager_dynamic"},
        "compile_s": round(compile_s, 1),
        "same_tokens_as_eager_dynamic": {"eager_static": agree_static, "compiled_static": agree_compiled},
        "config": {"n_layer": n_layer, "n_embd": n_embd, "batch": batch, "prompt_tokens": prompt_tokens,
                   "new_tokens": new_tokens, "rounds": rounds, "device": str(dev), "dtype": str(dt),
                   "threads": torch.get_num_threads()},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny model, few steps; writes only with --json")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    load_start = load_average()
    torch.set_num_threads(args.threads)
    kw: dict[str, Any] = ({"n_layer": 1, "n_embd": 64, "batch": 4, "new_tokens": 4, "rounds": 1} if args.smoke
                          else {})
    result = measure(device=args.device, dtype=args.dtype, **kw)
    finish(result, "decode-compile", argv, args.json, args.smoke, load_start)
    return result


if __name__ == "__main__":
    main()
