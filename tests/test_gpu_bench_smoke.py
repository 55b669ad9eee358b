"""Smoke tests of ``benchmarks/gpu.py`` (issue 11 item 7) on the CPU: ``--device cpu --smoke`` runs both models
(GPT-2 and Llama with LoRA, bf16 with autocast) and writes the JSON it promises, never the committed result;
bad flags fail in one line with exit code 2 and write nothing.

No assertion on any time: a benchmark measures, a test checks that it runs and reports.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
ROWS = ("kv_limit", "train_limit", "generate", "rollout", "ppo_iteration", "grpo_iteration")


@pytest.fixture
def gpu(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))  # benchmarks/ is not an installed package
    from benchmarks import gpu

    return gpu


def _positive(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "benchmarks.gpu", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)


def _committed() -> bytes | None:
    path = REPO / "benchmarks" / "results" / "gpu.json"
    return path.read_bytes() if path.exists() else None


def _check(r: dict, with_trl: bool) -> None:
    assert r["device"] == "cpu" and r["smoke"] is True
    assert r["command"].startswith("python -m benchmarks.gpu") and "--smoke" in r["command"]
    assert set(r["models"]) == {"gpt2-small", "llama-1b-lora"}
    for name, m in r["models"].items():
        for row in ROWS:
            assert _positive(m["rows"][row]["tokens_per_s"]) and _positive(m["rows"][row]["seconds"]), (name, row)
        for key in ("rollout_vs_generate", "rollout_vs_kv_limit", "generate_vs_kv_limit", "train_vs_limit",
                    "ppo_train_vs_limit"):
            assert _positive(m[key]), (name, key, m[key])
        assert m["config"]["dtype"] == "bfloat16" and m["config"]["autocast"] is True
        assert m["model"]["dtype"] == "bfloat16"
        if with_trl and m["grpo_vs_trl_grpo"] is not None:
            assert _positive(m["grpo_vs_trl_grpo"]) and _positive(m["ppo_vs_trl_grpo"])
            assert _positive(m["rows"]["trl_grpo"]["tokens_per_s"])
        else:  # without TRL, the reason is there
            assert m["grpo_vs_trl_grpo"] is None and m["grpo_vs_trl_grpo_reason"]
    gpt2, llama = r["models"]["gpt2-small"]["model"], r["models"]["llama-1b-lora"]["model"]
    assert gpt2["architecture"] == "GPT-2" and gpt2["lora"] is None
    assert gpt2["trainable_parameters"] == gpt2["parameters"]
    assert llama["architecture"] == "Llama" and llama["lora"]["r"] == 4
    assert 0 < llama["trainable_parameters"] < llama["parameters"]  # LoRA: the base is frozen
    assert llama["vocab_size"] == 50257  # the padded tokenizer (the full run's vocabulary)
    assert r["versions"]["torch"] and r["versions"]["peft"]


@pytest.mark.slow
def test_smoke_without_trl_writes_json_not_the_committed_result(tmp_path):
    before = _committed()
    out = tmp_path / "gpu.json"
    proc = _run("--device", "cpu", "--smoke", "--no-trl", "--threads", "1", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check(json.loads(out.read_text()), with_trl=False)
    assert "rollout_vs_generate" in proc.stdout and f"wrote {out}" in proc.stdout
    assert _committed() == before
    assert [p.name for p in tmp_path.iterdir()] == ["gpu.json"]  # no temporary file left beside it


@pytest.mark.slow
def test_smoke_with_trl_uses_lora_on_both_sides(tmp_path):
    pytest.importorskip("trl")
    out = tmp_path / "gpu.json"
    proc = _run("--device", "cpu", "--smoke", "--threads", "1", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    _check(r, with_trl=True)
    llama = r["models"]["llama-1b-lora"]
    if llama["grpo_vs_trl_grpo"] is not None:  # TRL ran: on the same LoRA'd model
        assert llama["trl_model_class"].startswith("Peft")


def test_smoke_without_json_writes_a_temporary_file(gpu):
    before = _committed()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a busy 2-core machine: two threads make tiny ops 10-100x slower
    try:
        result, path = gpu.run_benchmark(["gpt2-small"], device="cpu", smoke=True, use_trl=False)
    finally:
        torch.set_num_threads(threads)
    assert path.exists() and path.resolve().parent != gpu.RESULTS_DIR.resolve()
    assert json.loads(path.read_text())["models"]["gpt2-small"]["rows"]["generate"]["tokens_per_s"] > 0
    assert _committed() == before
    path.unlink()
    path.parent.rmdir()


@pytest.mark.parametrize(("args", "named"), [
    (["--dtype", "float8"], "'float8'"),
    (["--device", "tpu"], "'tpu'"),
    (["--device", "cuda:x"], "'cuda:x'"),
    (["--rounds", "0"], "'0'"),
    (["--rounds", "two"], "'two'"),
    (["--threads", "-1"], "'-1'"),
    (["--models", "gpt3"], "'gpt3'"),
    (["--models", ","], "','"),
])
def test_bad_flags_one_line_exit_2_nothing_written(gpu, tmp_path, capsys, args, named):
    before = _committed()
    out = tmp_path / "gpu.json"
    assert gpu.main(["--device", "cpu", "--smoke", "--json", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("benchmarks.gpu: error:") and named in err, err
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert _committed() == before


def test_cuda_when_absent_is_refused(gpu, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu.main(["--device", "cuda", "--smoke"]) == 2
    err = capsys.readouterr().err
    assert "'cuda'" in err and "not available" in err
    assert gpu.resolve_device("auto") == torch.device("cpu")


def test_smoke_or_cpu_run_never_writes_the_committed_result(gpu, capsys):
    before = _committed()
    for args in (["--device", "cpu", "--smoke"], ["--device", "cpu"]):
        assert gpu.main([*args, "--json", str(gpu.RESULT_PATH)]) == 2
        err = capsys.readouterr().err
        assert "gpu.json" in err and "only a full run on CUDA" in err
    assert _committed() == before


def test_output_path_rules(gpu, tmp_path):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert gpu.output_path(None, cuda, smoke=False) == gpu.RESULT_PATH  # only the full CUDA run
    assert gpu.output_path(None, cuda, smoke=True) is None  # -> a temporary directory
    assert gpu.output_path(None, cpu, smoke=False) is None
    assert gpu.output_path(tmp_path / "x.json", cpu, smoke=True) == tmp_path / "x.json"
    assert gpu.output_path(gpu.RESULT_PATH, cuda, smoke=False) == gpu.RESULT_PATH
    with pytest.raises(ValueError, match="gpu.json"):
        gpu.output_path(gpu.RESULT_PATH, cuda, smoke=True)


def test_padded_tokenizer_leaves_the_shared_one_alone(gpu):
    from benchmarks import env_step

    shared = env_step.benchmark_tokenizer()
    n = len(shared)
    tok = gpu.bench_tokenizer("gpt2")
    assert len(tok) == gpu.GPT2_VOCAB and len(shared) == n and tok is not shared
    assert gpu.bench_tokenizer("shipped") is shared
    assert tok.decode([gpu.GPT2_VOCAB - 1]) == f"<x{gpu.GPT2_VOCAB - n - 1}>"  # any id decodes
    with pytest.raises(ValueError, match="'gpt3'"):
        gpu.bench_tokenizer("gpt3")


def test_full_specs_are_the_promised_sizes(gpu):
    """The full configurations' parameter counts, from meta-device models (no memory, no time)."""
    tok = gpu.bench_tokenizer("gpt2")
    counts = {}
    for name, spec in gpu.FULL.items():
        model = gpu.build_model(spec, tok, torch.device("meta"))
        counts[name] = sum(p.numel() for p in model.parameters())
        assert spec.dtype == "bfloat16" and spec.batch % spec.group_size == 0
    assert 124e6 < counts["gpt2-small"] < 125e6  # GPT-2-small with its 50257 vocabulary
    assert 0.9e9 < counts["llama-1b-lora"] < 1.3e9
    assert gpu.FULL["llama-1b-lora"].lora_r > 0 and gpu.FULL["gpt2-small"].lora_r == 0


def test_apply_lora_freezes_the_base_and_keeps_the_hf_model(gpu):
    from transformers import LlamaForCausalLM

    tok = gpu.bench_tokenizer("shipped")
    spec = gpu.SMOKE["llama-1b-lora"]
    model = gpu.cast_model(gpu.build_model(spec, tok, torch.device("cpu")), torch.bfloat16)
    assert gpu.apply_lora(model, spec) is model and isinstance(model, LlamaForCausalLM)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert {p.dtype for n, p in model.named_parameters() if n in trainable} == {torch.float32}
    assert type(model.base_model).__name__ == "LlamaModel"  # the trunk LMPolicy and the KV loop call
    assert gpu.lora_config(gpu.SMOKE["gpt2-small"]) is None


def test_trl_failing_while_training_is_recorded_and_ours_still_measured(gpu, tmp_path):
    """A one-shot device run must not lose our rows when TRL breaks mid-training (e.g. an API mismatch)."""
    pytest.importorskip("trl")
    from benchmarks.throughput import Row

    class Broken:
        model = None

        def add_callback(self, cb):
            pass

        def train(self):
            raise RuntimeError("boom in TRL's step")

    bench = gpu.GpuBench(gpu.SMOKE["gpt2-small"], torch.device("cpu"), use_trl=False, workdir=tmp_path)
    bench.trl_trainer, bench.trl_reason = Broken(), None
    bench.rows["trl_grpo"] = Row("trl_grpo", "TRL", 1, lambda: float("nan"))
    bench.run()
    r = bench.results()
    assert r["grpo_vs_trl_grpo"] is None and "boom in TRL's step" in r["grpo_vs_trl_grpo_reason"]
    assert "trl_grpo" not in r["rows"]
    assert all(_positive(r["rows"][row]["tokens_per_s"]) for row in ROWS)
    assert _positive(r["rollout_vs_generate"])


def test_a_failing_model_keeps_the_other_and_exits_1(gpu, monkeypatch, tmp_path, capsys):
    """In a full run one model's failure (say, out of memory) is recorded; the other's figures are written."""
    monkeypatch.setattr(gpu, "FULL", {name: spec for name, spec in gpu.SMOKE.items()})
    real = gpu.measure_model

    def measure(spec, device, use_trl):
        if spec.name == "llama-1b-lora":
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(spec, device, use_trl)

    monkeypatch.setattr(gpu, "measure_model", measure)
    out = tmp_path / "gpu.json"
    assert gpu.main(["--device", "cpu", "--no-trl", "--threads", "1", "--json", str(out)]) == 1
    r = json.loads(out.read_text())
    assert r["failed"] == ["llama-1b-lora"] and "simulated" in r["models"]["llama-1b-lora"]["error"]
    assert _positive(r["models"]["gpt2-small"]["rows"]["generate"]["tokens_per_s"])
    assert r["smoke"] is False and "llama-1b-lora: FAILED" in capsys.readouterr().out
    from transformers.utils import logging as hf_logging

    assert hf_logging.is_progress_bar_enabled()  # main() leaves transformers' global setting as it found it
