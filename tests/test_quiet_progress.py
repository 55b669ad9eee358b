"""transformers' own progress bars ("Loading weights", "Writing model shards") stay out of our loads and saves."""

from __future__ import annotations

from transformers.utils import logging as hf_logging

from agents.policy import LMPolicy
from textenv.models import load_causal_lm, quiet_progress


def test_our_loads_and_saves_print_no_transformers_progress_bars(tmp_path, tiny_tokenizer_dir, capsys):
    assert hf_logging.is_progress_bar_enabled()
    policy = LMPolicy.from_pretrained("tiny", tokenizer=str(tiny_tokenizer_dir))
    capsys.readouterr()
    policy.save(tmp_path / "policy")
    load_causal_lm(str(tmp_path / "policy"))
    LMPolicy.from_pretrained(str(tmp_path / "policy"))
    err = capsys.readouterr().err
    assert "Loading weights" not in err and "Writing model shards" not in err
    assert hf_logging.is_progress_bar_enabled()  # the user's setting is left as it was


def test_quiet_progress_restores_the_setting_even_on_error():
    hf_logging.disable_progress_bar()
    try:
        with quiet_progress():
            assert not hf_logging.is_progress_bar_enabled()
        assert not hf_logging.is_progress_bar_enabled()  # was off: stays off
    finally:
        hf_logging.enable_progress_bar()
    try:
        with quiet_progress():
            raise KeyError("x")
    except KeyError:
        pass
    assert hf_logging.is_progress_bar_enabled()
