"""The agent contract (agents.contract.Learner): every learner satisfies it, with the same signatures, and
every learner of a seed evaluates on the same seed stream."""

from __future__ import annotations

import inspect

import pytest
import torch

import agents.base
import agents.sb3_agent
from agents import GRPO, PPO, REINFORCE, RLOO, Agent, LMPolicy
from agents.contract import Learner, evaluation_seed
from agents.registry import AGENTS
from agents.sb3_agent import SB3Agent
from benchmarks.learning import TRLGRPOAgent

ENV = "TextGen-Arithmetic-v0"
METHODS = ("learn", "evaluate", "samples", "save", "load")


def tiny_policy(tok, seed: int = 0) -> LMPolicy:
    from transformers import GPT2LMHeadModel

    from textenv.models import tiny_gpt2_config

    torch.manual_seed(seed)
    cfg = tiny_gpt2_config(len(tok), n_layer=1, n_embd=32, n_head=2, bos_token_id=tok.eos_token_id,
                           eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return LMPolicy(GPT2LMHeadModel(cfg).eval(), tok)


def protocol_params(name: str) -> list[inspect.Parameter]:
    params = inspect.signature(getattr(Learner, name)).parameters.values()
    return [p for p in params if p.name not in ("self", "cls")]


@pytest.mark.parametrize("cls", [Agent, REINFORCE, RLOO, GRPO, PPO, SB3Agent, TRLGRPOAgent])
@pytest.mark.parametrize("method", METHODS)
def test_signatures_agree_with_the_protocol(cls, method):
    """Same parameter names, order, kinds and defaults as the protocol; extras only after them, optional."""
    impl = inspect.signature(getattr(cls, method))
    got = [p for p in impl.parameters.values() if p.name not in ("self", "cls")]
    want = protocol_params(method)
    assert [(p.name, p.kind, p.default) for p in got[:len(want)]] == [(p.name, p.kind, p.default) for p in want]
    for extra in got[len(want):]:
        assert extra.kind is inspect.Parameter.VAR_KEYWORD or extra.default is not inspect.Parameter.empty, extra
    assert isinstance(inspect.getattr_static(cls, "load"), classmethod)


def test_every_native_agent_registers_itself():
    assert {"reinforce", "rloo", "grpo", "ppo"} <= set(AGENTS)
    assert AGENTS["ppo"] is PPO and agents.base.AGENT_CLASSES is AGENTS

    class Toy(REINFORCE):
        name = "toy-contract"

    try:
        assert AGENTS["toy-contract"] is Toy
        with pytest.raises(ValueError, match="taken by"):
            type("Other", (REINFORCE,), {"name": "toy-contract"})
    finally:
        AGENTS.pop("toy-contract")


def test_agents_are_learners_and_share_the_evaluation_seed(tiny_tokenizer, tiny_lm, tmp_path, monkeypatch):
    seen: list[tuple[str, int]] = []
    real = agents.base.evaluate_policy

    def spy(policy, envs, num_episodes, split="test", seed=0):
        seen.append((split, seed))
        return real(policy, envs, num_episodes, split=split, seed=seed)

    monkeypatch.setattr(agents.base, "evaluate_policy", spy)
    monkeypatch.setattr(agents.sb3_agent, "evaluate_policy", spy)
    kwargs = {"reward_model": "gold", "max_new_tokens": 3}
    ours = [cls(ENV, policy=tiny_policy(tiny_tokenizer, seed=i), batch_size=4, device="cpu", seed=2,
                env_kwargs=kwargs) for i, cls in enumerate((REINFORCE, PPO))]
    lm_dir = tmp_path / "lm"
    tiny_lm.save_pretrained(lm_dir)
    tiny_tokenizer.save_pretrained(lm_dir)
    sb3 = SB3Agent("a2c", ENV, str(lm_dir), seed=2, device="cpu", n_envs=2, n_steps=2, env_kwargs=kwargs)
    for learner in (*ours, sb3):
        assert isinstance(learner, Learner)
        learner.evaluate(4)
    assert seen == [("test", evaluation_seed(2))] * 3
    # different agents and policies, same seed: the same held-out prompts (and samples drawn on them)
    assert ours[0].envs.prompts() == ours[1].envs.prompts()
    assert [p for p, _ in ours[0].samples(4)] == [p for p, _ in ours[1].samples(4)]
    other_seed = REINFORCE(ENV, policy=tiny_policy(tiny_tokenizer), batch_size=4, device="cpu", seed=3,
                           env_kwargs=kwargs)
    other_seed.evaluate(4)
    assert seen[-1] == ("test", evaluation_seed(3))
    assert other_seed.envs.prompts() != ours[0].envs.prompts()


def test_trl_peer_is_a_learner_on_the_same_stream(monkeypatch):
    pytest.importorskip("trl")
    import agents.rollout

    seen: list[int] = []
    monkeypatch.setattr(agents.rollout, "evaluate_policy", lambda *a, seed=0, **k: seen.append(seed) or {})
    peer = TRLGRPOAgent(ENV, policy="tiny", reward_model="gold", seed=1)
    assert isinstance(peer, Learner)
    peer.evaluate(4)
    assert seen == [evaluation_seed(1)]


def test_evaluation_seed():
    assert [evaluation_seed(s) for s in (0, 1, 2)] == [12345, 13345, 14345]
    with pytest.raises(ValueError, match="seed"):
        evaluation_seed(1.5)  # type: ignore[arg-type]


def test_trl_peer_checkpoint_round_trips(tmp_path):
    pytest.importorskip("trl")
    import json

    peer = TRLGRPOAgent(ENV, policy="tiny", reward_model="gold", seed=1)
    with torch.no_grad():  # a trained policy differs from its reference: the checkpoint must keep both
        w = peer.policy.model.get_output_embeddings().weight
        w.add_(0.5 * torch.randn(w.shape, generator=torch.Generator().manual_seed(0)))
    peer.episodes, peer.history = 8, [{"reward": 0.5, "episodes": 8.0}]
    peer.save(tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / "agent.json").read_text())["reward_model"] == {"kind": "gold"}
    loaded = TRLGRPOAgent.load(tmp_path / "ckpt")
    assert isinstance(loaded, Learner) and loaded.episodes == 8 and loaded.history == peer.history
    again, before = loaded.evaluate(4), peer.evaluate(4)
    assert again == pytest.approx(before, rel=1e-5, abs=1e-6)
    assert again["kl"] > 0.1
    with pytest.raises(ValueError, match="env id"):
        TRLGRPOAgent.load(tmp_path / "ckpt", env=peer.envs)
