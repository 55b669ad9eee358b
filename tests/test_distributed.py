"""Data-parallel training under torchrun (issue 11 items 1-2): parity of 2 gloo processes with half the
batch each against 1 process with the whole batch, the train CLI under torchrun (rank-0 writes, resume),
and the refusals (SB3 under torchrun, a batch that does not split, bad torchrun variables).

This file is also the torchrun worker of the parity test: ``python tests/test_distributed.py worker ...``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

ARITH = "TextGen-Arithmetic-v0"
ENV_KWARGS = {"max_new_tokens": 6}
AGENTS = ("grpo", "ppo", "reinforce", "rloo")
WORLD = 2
BATCH = 12  # global: 6 episodes per rank, so GRPO/RLOO groups of 4 straddle the two ranks
ITERATIONS = 3
ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------- worker
def _overrides(name: str) -> dict[str, Any]:
    # lr high enough that 3 steps move the weights; no clipping, so the gradients compare as computed
    common: dict[str, Any] = {"batch_size": BATCH, "seed": 3, "learning_rate": 1e-3, "max_grad_norm": 1e6,
                              "device": "cpu"}
    if name == "ppo":  # minibatches (a rank may hold few or none of one), whitening, the adaptive KL's mean
        return {**common, "n_epochs": 2, "n_minibatches": 3, "adaptive_kl": True}
    if name == "grpo":
        return {**common, "group_size": 4, "n_minibatches": 2, "num_iterations": 2}
    if name == "rloo":
        return {**common, "group_size": 4}
    return {**common, "baseline": "ema"}


def _policy(arch: str = "gpt2") -> Any:
    """The tiny policy of every worker, prompt sharing off (``share_prompt_prefix``): with it, a GRPO group
    that straddles the ranks is computed as two partial groups there and one group here (and FSDP does not
    share), a change of float rounding that AdamW scales up to ~2e-5 in a near-zero-gradient entry, above
    the weights' tolerance. The reduction is what these tests compare; sharing's equality with the full
    forward is tests/test_shared_prefix.py's."""
    from transformers import GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from agents.policy import LMPolicy
    from textenv.models import load_tokenizer, tiny_gpt2_config

    tok = load_tokenizer("default")
    torch.manual_seed(0)
    if arch == "llama":  # blocks in model.layers, an untied LM head, grouped-query attention
        llama = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                            bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                            pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
        return LMPolicy(LlamaForCausalLM(llama), tok, share_prompt_prefix=False)
    cfg = tiny_gpt2_config(len(tok), n_layer=2, n_embd=64, n_head=2, bos_token_id=tok.eos_token_id,
                           eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = GPT2LMHeadModel(cfg)
    for block in model.transformer.h:
        # the key part of this bias has a gradient of exactly 0 in exact arithmetic (softmax ignores a shift
        # of all scores), so its float gradient is rounding noise, which AdamW scales up to lr-sized steps of
        # random sign: frozen, the weights compare to float tolerance
        block.attn.c_attn.bias.requires_grad_(False)
    return LMPolicy(model, tok, share_prompt_prefix=False)


def _full(t: torch.Tensor) -> torch.Tensor:
    """A whole tensor of a parameter or gradient (gathered from its shards under FSDP), detached, contiguous."""
    from torch.distributed.tensor import DTensor

    if isinstance(t, DTensor):
        t = t.full_tensor()
    return t.detach().clone().contiguous()


def _worker(spec: str, out: str, names: list[str]) -> None:
    """Train each agent ``ITERATIONS`` iterations and write its weights, last gradients and history.
    ``ddp``: one of WORLD torchrun ranks; ``single``: one process with the whole batch, whose rollouts are
    the WORLD ranks' shards collected here and concatenated (the same episodes, the same seeds); ``fsdp``:
    a rank of an FSDP job. ``spec`` is the mode, optionally with ``+gc`` (gradient checkpointing) and
    ``+llama`` (a tiny Llama-style policy instead of GPT-2)."""
    import gymnasium as gym
    from gymnasium.vector import AutoresetMode
    from safetensors.torch import save_file

    import textenv  # noqa: F401
    from agents.distributed import concat_rollouts
    from agents.registry import get_agent_class

    torch.set_num_threads(1)
    mode, *options = spec.split("+")  # e.g. "fsdp+gc+llama": gradient checkpointing, a Llama-style policy
    for name in names:
        cls = get_agent_class(name)
        if mode == "single":

            class Sharded(cls):  # type: ignore[valid-type,misc]
                def collect(self, iteration: int | None = None, split: str | None = None) -> Any:
                    shards = [self.collect_shard(self.half, r, WORLD, iteration, split) for r in range(WORLD)]
                    return concat_rollouts(shards, self.envs.pad_id)

            cls = Sharded
        extra: dict[str, Any] = {"strategy": "fsdp"} if mode == "fsdp" else {}
        if "gc" in options:
            extra["gradient_checkpointing"] = True
        agent = cls(ARITH, policy=_policy("llama" if "llama" in options else "gpt2"), env_kwargs=ENV_KWARGS,
                    **_overrides(name), **extra)
        if mode == "single":
            agent.half = gym.make_vec(ARITH, num_envs=BATCH // WORLD, autoreset_mode=AutoresetMode.DISABLED,
                                      tokenizer=agent.policy.tokenizer, **ENV_KWARGS).unwrapped
        else:
            assert agent.dist.world_size == WORLD and agent.envs.num_envs == BATCH // WORLD
            assert agent.sharded == (mode == "fsdp")
        agent.learn(BATCH * ITERATIONS, progress=False)
        named = dict(agent.policy.named_parameters())
        params = {k: _full(p) for k, p in named.items()}  # under FSDP a collective: every rank gathers
        grads = {k: _full(p.grad) for k, p in named.items() if p.grad is not None}
        if agent.dist.is_main:
            save_file(params, f"{out}/{name}-params.safetensors")
            save_file(grads, f"{out}/{name}-grads.safetensors")
            Path(f"{out}/{name}-history.json").write_text(json.dumps(agent.history))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun(args: list[str], timeout: float, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """``python -m torch.distributed.run --nproc_per_node=2 ARGS`` on a free local port, 1 thread a rank."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={WORLD}", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------------------------------- parity
@pytest.fixture(scope="module")
def single_run(tmp_path_factory) -> Path:
    """The one-process side of the parity tests: every agent trained on the whole batch (run once)."""
    single = tmp_path_factory.mktemp("single")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(var, None)
    r = subprocess.run([sys.executable, str(Path(__file__).resolve()), "worker", "single", str(single), *AGENTS],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return single


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_gloo_ranks_with_half_the_batch_match_one_process_with_all_of_it(tmp_path, single_run, strategy):
    """DDP (gradients all-reduced) and FSDP (weights, gradients and AdamW states sharded by torch's
    fully_shard) on 2 gloo ranks end with the weights, gradients and metrics of one process."""
    from safetensors.torch import load_file

    multi, single = tmp_path / strategy, single_run
    multi.mkdir()
    r = torchrun([str(Path(__file__).resolve()), "worker", strategy, str(multi), *AGENTS], timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    initial = dict(_policy().named_parameters())
    for name in AGENTS:
        p_ddp, p_one = load_file(multi / f"{name}-params.safetensors"), load_file(single / f"{name}-params.safetensors")
        assert p_ddp.keys() == p_one.keys()
        moved = max(float((p_one[k] - initial[k].detach()).abs().max()) for k in p_one)
        assert moved > 1e-3, f"{name}: training did not move the weights ({moved})"
        for k in p_one:
            # AdamW divides by sqrt(v): in an entry whose gradient is ~0, the reduction's float rounding (an
            # all-reduce sums in another order) can move each update by up to 2 lr. Allow that in a few
            # entries (at most 0.1%, by at most 2 lr per optimizer step); every other one within 2e-5 + 1e-4 |p|.
            diff, tol = (p_ddp[k] - p_one[k]).abs(), 2e-5 + 1e-4 * p_one[k].abs()
            off, worst = float((diff > tol).float().mean()), float(diff.max())
            o = _overrides(name)
            steps = ITERATIONS * o.get("n_epochs", 1) * o.get("num_iterations", 1) * o.get("n_minibatches", 1)
            assert off <= 1e-3 and worst <= 2 * steps * o["learning_rate"], \
                f"{name} {k}: {off:.2%} of entries off, max {worst:.2e}"
        g_ddp, g_one = load_file(multi / f"{name}-grads.safetensors"), load_file(single / f"{name}-grads.safetensors")
        assert g_ddp.keys() == g_one.keys()  # e.g. GRPO's unused value head has no gradient in either
        for k in g_one:
            torch.testing.assert_close(g_ddp[k], g_one[k], rtol=1e-3, atol=1e-5, msg=lambda m, k=k, n=name: f"{n} grad {k}: {m}")
        h_ddp = json.loads((multi / f"{name}-history.json").read_text())
        h_one = json.loads((single / f"{name}-history.json").read_text())
        assert [row["episodes"] for row in h_ddp] == [BATCH * (i + 1) for i in range(ITERATIONS)]
        for row_ddp, row_one in zip(h_ddp, h_one, strict=True):
            for key in ("reward", "gold_score", "kl", "grad_norm", "policy_loss", "entropy"):
                assert row_ddp[key] == pytest.approx(row_one[key], rel=1e-3, abs=1e-5), (name, key)
            if name == "ppo":
                for key in ("kl_coef", "explained_variance", "approx_kl", "value_loss"):
                    assert row_ddp[key] == pytest.approx(row_one[key], rel=1e-3, abs=1e-5), (name, key)


@pytest.mark.slow
def test_fsdp_with_gradient_checkpointing_on_a_llama_policy_matches_one_process(tmp_path):
    """A Llama-style policy (blocks in ``model.layers``, an untied head) sharded by FSDP, with its blocks
    checkpointed (FSDP's hooks re-run in the recomputed forward): PPO still ends where one process ends."""
    from safetensors.torch import load_file

    multi, single = tmp_path / "fsdp", tmp_path / "single"
    multi.mkdir()
    single.mkdir()
    worker = [str(Path(__file__).resolve()), "worker"]
    r = torchrun([*worker, "fsdp+gc+llama", str(multi), "ppo"], timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(var, None)
    r = subprocess.run([sys.executable, *worker, "single+gc+llama", str(single), "ppo"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    initial = dict(_policy("llama").named_parameters())
    trained = load_file(single / "ppo-params.safetensors")
    assert max(float((trained[k] - initial[k].detach()).abs().max()) for k in trained) > 1e-3
    for kind, tol in (("params", (1e-4, 2e-5)), ("grads", (1e-3, 1e-5))):
        a, b = load_file(multi / f"ppo-{kind}.safetensors"), load_file(single / f"ppo-{kind}.safetensors")
        assert a.keys() == b.keys() and a
        for k in b:
            torch.testing.assert_close(a[k], b[k], rtol=tol[0], atol=tol[1], msg=lambda m, k=k, kind=kind: f"{kind} {k}: {m}")


# ------------------------------------------------------------------------------------------------- CLI
TRAIN = ["-m", "agents", "train", "--agent", "grpo", "--env", ARITH, "--policy", "tiny", "--batch-size", "8",
         "--group-size", "4", "--eval-episodes", "4", "--no-progress"]


@pytest.mark.slow
def test_train_cli_under_torchrun_writes_once_from_rank_0_and_resumes(tmp_path):
    out = tmp_path / "run"
    r = torchrun([*TRAIN, "--episodes", "16", "--out", str(out)], timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("training grpo on") == 1 and "(2 processes)" in r.stdout  # rank 0 prints
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 2  # header + 2 iterations of the global batch of 8
    ckpts = sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-"))
    assert len(ckpts) == 1, ckpts  # written once (by rank 0), at the end
    meta = json.loads((out / ckpts[-1] / "agent.json").read_text())
    assert meta["episodes"] == 16 and meta["config"]["batch_size"] == 8
    summary = json.loads((out / "summary.json").read_text())
    assert "final" in summary and "initial" in summary
    assert not [p for p in out.rglob("*") if ".tmp" in p.name or p.name.endswith(".lock")]
    r = torchrun([*TRAIN, "--episodes", "24", "--out", str(out), "--resume"], timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("resuming grpo") == 1
    assert len((out / "metrics.csv").read_text().splitlines()) == 1 + 3
    latest = max((p for p in out.iterdir() if p.name.startswith("checkpoint-")), key=lambda p: p.name)
    assert json.loads((latest / "agent.json").read_text())["episodes"] == 24


@pytest.mark.slow
def test_fsdp_checkpoint_is_a_full_one_process_checkpoint_and_resumes_exactly(tmp_path):
    """Under --strategy fsdp the ranks gather full state dicts and rank 0 writes them: Agent.load reads the
    checkpoint in one process unchanged (whole weights, a one-process optimizer state), and a run resumed
    under FSDP from it ends where an uninterrupted run ends."""
    from safetensors.torch import load_file

    from agents import Agent

    fsdp = [*TRAIN, "--strategy", "fsdp"]
    cut, whole = tmp_path / "cut", tmp_path / "whole"
    r = torchrun([*fsdp, "--episodes", "16", "--out", str(cut)], timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("training grpo on") == 1 and "(2 processes)" in r.stdout
    ckpt = cut / "checkpoint-00000016"
    agent = Agent.load(ckpt)  # one process: strategy fsdp is a no-op, the policy is whole
    assert agent.config.strategy == "fsdp" and not agent.sharded and agent.episodes == 16
    trainable = [p for p in agent.policy.parameters() if p.requires_grad]
    state = agent.optimizer.state_dict()["state"]
    assert state and all(state[i]["exp_avg"].shape == p.shape for i, p in enumerate(agent.policy.parameters())
                         if i in state)
    assert len(state) <= len(trainable)
    assert (ckpt / "reference").is_dir()  # the tiny policy's reference, gathered from its shards
    r = torchrun([*fsdp, "--episodes", "24", "--out", str(cut), "--resume"], timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("resuming grpo") == 1
    r = torchrun([*fsdp, "--episodes", "24", "--out", str(whole)], timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    a = load_file(cut / "checkpoint-00000024" / "policy" / "model.safetensors")
    b = load_file(whole / "checkpoint-00000024" / "policy" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
    moved = load_file(ckpt / "policy" / "model.safetensors")
    assert max(float((moved[k] - b[k]).abs().max()) for k in b) > 0  # the last 8 episodes trained
    final_cut = json.loads((cut / "summary.json").read_text())["final"]
    final_whole = json.loads((whole / "summary.json").read_text())["final"]
    assert final_cut == pytest.approx(final_whole, rel=1e-4, abs=1e-6)


# ------------------------------------------------------------------------------------------------- refusals
@pytest.fixture
def as_rank_0_of_2(monkeypatch):
    """The torchrun variables of rank 0 of 2, without a process group (every refusal comes before one)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)


def test_a_global_batch_that_does_not_split_among_the_ranks_is_refused(as_rank_0_of_2):
    from agents import GRPO, REINFORCE

    with pytest.raises(ValueError, match=r"batch_size 5 \(the global batch\) does not divide among WORLD_SIZE=2"):
        REINFORCE(ARITH, policy="tiny", batch_size=5)
    with pytest.raises(ValueError, match=r"batch_size 5 .*WORLD_SIZE=2"):
        GRPO(ARITH, policy="tiny", batch_size=5, group_size=5)


def test_sb3_agents_are_refused_under_torchrun(as_rank_0_of_2, tmp_path, capsys):
    from agents.cli import main
    from agents.sb3_agent import SB3Agent

    with pytest.raises(ValueError, match=r"sb3-ppo is single-process.*WORLD_SIZE=2"):
        SB3Agent("ppo", ARITH, "tiny")
    out = tmp_path / "run"
    code = main(["train", "--agent", "sb3-a2c", "--env", ARITH, "--policy", "tiny", "--out", str(out), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sb3-a2c is single-process" in err[0] and "WORLD_SIZE=2" in err[0]
    assert not out.exists()


def test_bad_torchrun_variables_are_named(monkeypatch):
    from agents import REINFORCE
    from agents.distributed import launched_world_size

    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match=r"WORLD_SIZE='two'"):
        launched_world_size()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ValueError, match=r"WORLD_SIZE=2 but RANK=None"):
        REINFORCE(ARITH, policy="tiny", batch_size=4)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ValueError, match=r"MASTER_ADDR is not set"):
        REINFORCE(ARITH, policy="tiny", batch_size=4)
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK")
    agent = REINFORCE(ARITH, policy="tiny", batch_size=4)  # still usable: one process again
    assert agent.dist.world_size == 1 and agent.envs.num_envs == 4
    agent.learn(4, progress=False)


def test_bad_strategies_are_refused_and_fsdp_in_one_process_trains_unsharded():
    from agents import GRPO, PPO

    with pytest.raises(ValueError, match=r"strategy must be one of \['ddp', 'fsdp'\], got 'zero3'"):
        PPO(ARITH, policy="tiny", batch_size=4, strategy="zero3")
    pytest.importorskip("peft")
    with pytest.raises(ValueError, match=r"strategy 'fsdp' does not support LoRA \(lora_r=4\).*use strategy 'ddp'"):
        GRPO(ARITH, policy="tiny", batch_size=4, group_size=2, strategy="fsdp", lora_r=4)
    agent = GRPO(ARITH, policy="tiny", batch_size=4, group_size=2, strategy="fsdp", env_kwargs=ENV_KWARGS)
    assert not agent.sharded and agent.dist.world_size == 1  # nothing to shard: trains as ddp does
    agent.learn(4, progress=False)
    assert agent.history[-1]["episodes"] == 4.0


def test_fsdp_units_are_the_transformer_blocks_and_unsharded_models_pass_through():
    from agents import fsdp

    gpt2, llama = _policy("gpt2"), _policy("llama")
    assert fsdp.transformer_blocks(gpt2.model) == list(gpt2.model.transformer.h)
    assert fsdp.transformer_blocks(llama.model) == list(llama.model.model.layers)
    with pytest.raises(ValueError, match=r"Linear has no list of transformer blocks"):
        fsdp.transformer_blocks(torch.nn.Linear(2, 2))
    before = {k: v.clone() for k, v in gpt2.ref_model.state_dict().items()}
    with fsdp.gathered(gpt2), fsdp.gathered_frozen(gpt2.ref_model):  # not sharded: nothing to gather
        assert not fsdp.is_sharded(gpt2)
    after = gpt2.ref_model.state_dict()
    assert all(after[k] is not None and torch.equal(after[k], v) for k, v in before.items())


def test_one_process_context_is_the_identity():
    from agents.distributed import Context, rank_seed

    ctx = Context()
    x = torch.arange(6.0).view(3, 2)
    assert ctx.gather(x) is x and ctx.all_sum(x) is x and ctx.shard(3) == slice(0, 3)
    idx = torch.tensor([2, 0])
    assert ctx.minibatch_part(idx)[0] is idx
    assert ctx.weighted_mean({"a": torch.tensor(1.5)}, 0.0) == {"a": 1.5}
    assert rank_seed(17, 0) == 17 and rank_seed(17, 1) != 17
    two = Context(rank=1, world_size=2)
    assert two.shard(8) == slice(4, 8)
    part, here = two.minibatch_part(torch.tensor([5, 1, 7, 0, 2]))
    assert here and part.tolist() == [0, 2]  # rank 0 takes [5, 1, 7]: parts differ by at most one
    assert Context(rank=0, world_size=2).minibatch_part(torch.tensor([5, 1, 7, 0, 2]))[0].tolist() == [5, 1, 7]
    part, here = two.minibatch_part(torch.tensor([3]))
    assert not here and part.tolist() == [3]  # a stand-in episode, weighted 0
    assert ctx.local_indices(idx, 3)[0] is idx
    local, here = two.local_indices(torch.tensor([5, 1, 7]), 8)
    assert here and local.tolist() == [1, 3]
    local, here = two.local_indices(torch.tensor([0, 3]), 8)
    assert not here and local.tolist() == [0]  # a stand-in episode, weighted 0


def test_concat_rollouts_repads_prompts_and_completions():
    from agents import REINFORCE
    from agents.distributed import concat_rollouts

    agent = REINFORCE(ARITH, policy="tiny", batch_size=4)
    a, b = agent.collect_shard(agent.envs, 0, 2), agent.collect_shard(agent.envs, 1, 2)
    both = concat_rollouts([a, b], agent.envs.pad_id)
    P = max(a.query_ids.shape[1], b.query_ids.shape[1])
    T = max(a.tokens.shape[1], b.tokens.shape[1])
    assert both.query_ids.shape == (8, P) and both.tokens.shape == (8, T)
    assert torch.equal(both.scores, torch.cat([a.scores, b.scores]))
    assert both.prompts == a.prompts + b.prompts
    assert torch.equal(both.query_ids[4:, P - b.query_ids.shape[1]:], b.query_ids)
    assert both.mask.sum() == a.mask.sum() + b.mask.sum()


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "worker":
        _worker(sys.argv[2], sys.argv[3], sys.argv[4:])
    else:
        raise SystemExit("usage: test_distributed.py worker ddp|fsdp|single[+gc][+llama] OUT_DIR AGENT...")
