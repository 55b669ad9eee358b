"""The application tasks of issue 12 (translation, summarisation, QA, detox): known answers, the skill each
gold score needs, graded sample responses, splits, token budgets and both env checkers."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import textenv
from textenv.tasks import TASKS, get_task
from textenv.tasks.base import split_of
from textenv.tasks.detox import DetoxTask, content_preservation, content_words, toxicity
from textenv.tasks.qa import QATask, answer_question, references
from textenv.tasks.summarization import (
    SummarizationTask,
    key_facts,
    length_penalty,
    parse_document,
    summary_of,
)
from textenv.tasks.translation import (
    Clause,
    NounPhrase,
    TranslationTask,
    english,
    parse_english,
    parse_source,
    reference,
    velan,
    word_by_word,
)

APPS = {"translation": "TextGen-Translation-v0", "summarization": "TextGen-Summarization-v0",
        "qa": "TextGen-QA-v0", "detox": "TextGen-Detox-v0"}
GARBAGE = ["", " ", "\n\n", "!!!", "ééé ünïcödé 🙂 中文", "\x00\x01\ufffd", "123abc" * 50, "-" * 1000,
           "good " * 2000, "9" * 5000, "English: \nVelan:", "Velan:", "The quiet river passed the lamp.",
           "not " * 1000 + "bad", "Summarize: \nSummary:", "Summarize: Tom fixed the lamp.\nSummary:",
           "Context: Tom has the lamp.\nQuestion: Who is the oldest?\nAnswer:",
           "Rewrite politely: ->", "Rewrite politely: You idiot! ->", "IDIOT " * 500 + "!" * 500]


def _mean_gold(task_name: str, quality: float, n: int = 150, seed: int = 0) -> float:
    task, rng = get_task(task_name), np.random.default_rng(seed)
    prompts = [task.sample_prompt(rng) for _ in range(n)]
    return float(np.mean(task.gold_score(prompts, [task.sample_response(p, rng, quality) for p in prompts])))


# ---------------------------------------------------------------------------- every application task
@pytest.mark.parametrize("name", sorted(APPS))
def test_registered(name: str) -> None:
    assert name in TASKS and textenv.ENV_IDS[APPS[name]] == name
    assert get_task(name).name == name


@pytest.mark.parametrize("name", sorted(APPS))
def test_splits_disjoint_and_seeded(name: str) -> None:
    task = get_task(name)
    train, test = task.prompts(1500, "train", seed=3), task.prompts(300, "test", seed=3)
    assert train == task.prompts(1500, "train", seed=3) and train != task.prompts(1500, "train", seed=4)
    assert not set(train) & set(test)
    assert all(split_of(p) == "test" for p in test)
    assert len(set(train)) > 1400, "the prompt source must be effectively unlimited"


@pytest.mark.parametrize("name", sorted(APPS))
def test_gold_grows_with_quality(name: str) -> None:
    g0, g5, g1 = (_mean_gold(name, q) for q in (0.0, 0.5, 1.0))
    assert g1 > g5 > g0
    assert g1 > (0.8 if name == "detox" else 0.9) and g0 < 0.5  # a polite frame costs detox some chrF


@pytest.mark.parametrize("name", sorted(APPS))
def test_gold_in_unit_interval_on_garbage(name: str) -> None:
    task = get_task(name)
    real = task.generate_prompt(np.random.default_rng(0))
    prompts = [real] * len(GARBAGE) + GARBAGE
    completions = GARBAGE + GARBAGE[::-1]
    scores = task.gold_score(prompts, completions)
    assert len(scores) == len(prompts) and all(type(s) is float and 0.0 <= s <= 1.0 for s in scores)
    assert task.gold_score([], []) == []
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        task.gold_score([real, real], [""])
    with pytest.raises(ValueError, match="1.5"):
        task.sample_response(real, np.random.default_rng(0), 1.5)


@pytest.mark.parametrize("name", sorted(APPS))
def test_corpora_of_every_stage(name: str) -> None:
    task = get_task(name)
    pairs = task.sft_pairs(30, seed=0)
    assert pairs == task.sft_pairs(30, seed=0) and task.pretrain_corpus(5, seed=0) == [p + r for p, r in pairs[:5]]
    rows = task.scored_texts(30, seed=0, split="test")
    assert all(split_of(str(r["prompt"])) == "test" and 0.0 <= float(r["score"]) <= 1.0 for r in rows)  # type: ignore[arg-type]
    assert len({float(r["score"]) for r in rows}) > 3, "scores must be graded, not pass/fail"  # type: ignore[arg-type]
    prefs = task.preference_pairs(30, seed=0)
    chosen = task.gold_score([r["prompt"] for r in prefs], [r["chosen"] for r in prefs])
    rejected = task.gold_score([r["prompt"] for r in prefs], [r["rejected"] for r in prefs])
    assert all(c > r for c, r in zip(chosen, rejected, strict=True))


@pytest.mark.parametrize("name", sorted(APPS))
def test_prompt_and_reference_fit_the_default_token_budgets(name: str) -> None:
    from textenv.models import load_tokenizer

    tok = load_tokenizer("default")
    task, rng = get_task(name), np.random.default_rng(0)
    for _ in range(200):
        p = task.sample_prompt(rng)
        best = task.sample_response(p, rng, 1.0)
        assert len(tok(p, add_special_tokens=False)["input_ids"]) <= task.default_max_prompt_tokens, p
        # the best response plus EOS fits the completion budget
        assert len(tok(best, add_special_tokens=False)["input_ids"]) < task.default_max_new_tokens, best
    assert task.default_max_prompt_tokens + task.default_max_new_tokens <= 128  # the default policy's context


@pytest.mark.parametrize("name", sorted(APPS))
def test_both_env_checkers_pass_with_gold(name: str) -> None:
    from gymnasium.utils.env_checker import check_env as gym_check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gym.make(APPS[name], reward_model="gold")
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(gym.make(APPS[name], reward_model="gold"), warn=False)
    env.reset(seed=0)
    done, info = False, {}
    while not done:
        _, _, terminated, truncated, info = env.step(int(env.action_space.sample()))
        done = terminated or truncated
    assert 0.0 <= info["gold_score"] <= 1.0


# ---------------------------------------------------------------------------- translation
def test_translation_known_answers() -> None:
    p = "English: The old farmers carried a lamp near my garden.\nVelan:"
    assert reference(p) == "elagri veti hort mie pres lumom portun."
    task = TranslationTask()
    assert task.gold_score([p], [" elagri veti hort mie pres lumom portun."]) == [1.0]
    assert task.prompt_columns([p, "hello"]) == {"reference": ["elagri veti hort mie pres lumom portun.", None]}
    # singular subject: no -n; present tense -a; future -ar; "the" prefix; plural adjective agreement
    assert reference("English: A dog watches the tiny birds.\nVelan:") == "kan elavi miniom vida."
    assert reference("English: Their dogs will hide some broken lamps.\nVelan:") == "kani vos lumi frakiom kelarn."
    details = task.gold_details([p], [" elagri veti hort mie pres lumom portun."])[0]
    assert details == {"gold": 1.0, "chrf": 1.0, "bleu": 1.0}


def test_translation_parser_round_trips_and_rejects() -> None:
    rng = np.random.default_rng(1)
    task = TranslationTask()
    for _ in range(300):
        source = parse_source(task.generate_prompt(rng))
        assert source is not None
        clause = parse_english(source)
        assert clause is not None and english(clause) == source
    for bad in ("The dog carry a lamp.", "A dogs carried a lamp.", "The dog will carried a lamp.",
                "The dog carried a lamp near.", "The dog carried a lamp today.", "dog carried lamp.", ""):
        assert parse_english(bad) is None, bad
    assert TranslationTask().gold_score(["English: The dog carry a lamp.\nVelan:"], ["kan lumom porta."]) == [0.0]


def test_translation_needs_grammar_not_lookup() -> None:
    """Word order, agreement and morphology matter: the lexicon lookup and each single rule broken cost chrF."""
    task = TranslationTask()
    prompts = task.prompts(200, seed=5)
    lookup = np.mean(task.gold_score(prompts, [" " + word_by_word(parse_source(p) or "") for p in prompts]))
    assert lookup < 0.45
    subj = NounPhrase("the", ("old",), "farmer", True)
    obj = NounPhrase("a", ("tiny",), "bird", False)
    p = f"English: {english(Clause(subj, 'watch', 'past', obj))}\nVelan:"
    ref = reference(p)
    assert ref == velan(Clause(subj, "watch", "past", obj)) == "elagri veti av minom vidun."
    no_agreement = "elagri vet av minom vidu."
    english_order = "elagri veti vidun av minom."
    for wrong in (no_agreement, english_order):
        assert task.gold_score([p], [wrong])[0] < 0.9


def test_translation_sample_response_is_seeded() -> None:
    task = TranslationTask()
    p = task.generate_prompt(np.random.default_rng(0))
    a = task.sample_response(p, np.random.default_rng(9), 0.3)
    assert a == task.sample_response(p, np.random.default_rng(9), 0.3)
    assert task.sample_response(p, np.random.default_rng(9), 1.0) == " " + reference(p)  # type: ignore[operator]


# ---------------------------------------------------------------------------- summarisation
DOC = ("Summarize: On Monday, Mara painted the old wagon near the bridge. Tom found the lamp. It rained all day. "
       "Mara fixed the ladder.\nSummary:")


def test_summarization_known_answers() -> None:
    task = SummarizationTask()
    assert key_facts(parse_document(DOC) or "") == ("Mara", [("paint", "wagon"), ("fix", "ladder")])
    ref = "Mara painted the wagon and fixed the ladder."
    assert task.prompt_columns([DOC]) == {"reference": [ref]}
    assert summary_of("Ada", [("read", "letter"), ("hold", "lamp"), ("find", "key")]) == \
        "Ada read the letter, held the lamp and found the key."
    assert task.gold_score([DOC], [" " + ref]) == [1.0]
    # one fact of two: ROUGE-L F of the LCS "Mara painted the wagon" (4 of 8 and 4 of 4 words), no penalty
    assert task.gold_score([DOC], [" Mara painted the wagon."])[0] == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    # no main person (nobody is named twice): nothing to summarise
    assert task.gold_score(["Summarize: Tom fixed the lamp. Ada read the letter.\nSummary:"], [ref]) == [0.0]


def test_summarization_length_penalty() -> None:
    ref = "Mara painted the wagon and fixed the ladder."  # 8 words: 10 allowed
    assert length_penalty(" ".join(["w"] * 10), ref) == 1.0
    assert length_penalty(" ".join(["w"] * 20), ref) == pytest.approx(0.5)
    task = SummarizationTask()
    padded = " Mara painted the wagon and fixed the ladder and then she was very happy about it all."
    details = task.gold_details([DOC], [padded])[0]
    assert details["rougeL"] > 0.6 and details["length_penalty"] == pytest.approx(10 / 17)
    assert details["gold"] == pytest.approx(details["rougeL"] * details["length_penalty"])


def test_summarization_needs_selection_and_compression() -> None:
    """Copying the document or its first sentence scores far below the reference."""
    task = SummarizationTask()
    prompts = task.prompts(200, seed=2)
    copy = np.mean(task.gold_score(prompts, [" " + (parse_document(p) or "") for p in prompts]))
    lead = np.mean(task.gold_score(prompts, [" " + (parse_document(p) or "").split(". ")[0] + "." for p in prompts]))
    assert copy < 0.3 and lead < 0.5
    for p in prompts[:50]:
        doc = parse_document(p) or ""
        main, facts = key_facts(doc) or ("", [])
        assert 2 <= len(facts) <= 3 and doc.count(main + " ") == len(facts)
        assert 4 <= doc.count(".") <= 5


# ---------------------------------------------------------------------------- question answering
PASSAGE = ("Tom has the lamp. Ada has the kettle. Eva has the ribbon. The lamp is in the garden. "
           "The kettle is in the tower. The ribbon is in the market. Ada is older than Tom. Eva is older than Ada.")


@pytest.mark.parametrize(("question", "answer"), [
    ("Where is the lamp?", "the garden"),
    ("Who has the kettle?", "Ada"),
    ("Where is the thing that Eva has?", "the market"),
    ("Who has the thing in the tower?", "Ada"),
    ("Who is the oldest?", "Eva"),
    ("Who is the youngest?", "Tom"),
    ("Where is the violin?", None),
    ("Who has the thing in the harbor?", None),
    ("What is the meaning of life?", None),
])
def test_qa_known_answers(question: str, answer: str | None) -> None:
    assert answer_question(PASSAGE, question) == answer


def test_qa_gold_is_squad_f1_and_em() -> None:
    task = QATask()
    p = f"Context: {PASSAGE}\nQuestion: Where is the thing that Eva has?\nAnswer:"
    assert references(p) == ["the market", "in the market"]
    assert task.gold_score([p] * 4, [" the market", " Market.\nmore text", " It is the market.", " the tower"]) == \
        [1.0, 1.0, 0.5, 0.0]  # "it is market" vs "market": precision 1/3, recall 1
    assert task.gold_details([p, p], [" in the market", " it is in the market"]) == [
        {"gold": 1.0, "f1": 1.0, "exact_match": 1.0},
        {"gold": pytest.approx(2 / 3), "f1": pytest.approx(2 / 3), "exact_match": 0.0}]  # 2 of 4 words vs "in market"
    cols = task.prompt_columns([p, f"Context: {PASSAGE}\nQuestion: Who has the lamp?\nAnswer:", "hi"])
    assert cols == {"answers": [["the market", "in the market"], ["Tom"], None], "two_facts": [True, False, False]}
    # incomplete age information: no single oldest person, nothing to score
    partial = "Context: Tom has the lamp. Ada is older than Tom. Eva is older than Tom.\nQuestion: Who is the oldest?\nAnswer:"
    assert references(partial) is None and task.gold_score([partial], [" Ada"]) == [0.0]


def test_qa_two_fact_questions_need_both_facts() -> None:
    """About half the prompts combine two facts, every prompt is answerable, and answering a two-fact
    question with the one-fact shortcut (the entity named next to the question's word) scores 0."""
    task = QATask()
    prompts = task.prompts(400, seed=1)
    cols = task.prompt_columns(prompts)
    assert all(a is not None for a in cols["answers"])
    share = float(np.mean(cols["two_facts"]))
    assert 0.45 < share < 0.75
    p = f"Context: {PASSAGE}\nQuestion: Who has the thing in the tower?\nAnswer:"
    assert task.gold_score([p], [" the kettle"]) == [0.0]


# ---------------------------------------------------------------------------- detox and the toxicity reward
@pytest.mark.parametrize(("text", "expected"), [
    ("Please fix the lamp.", 0.0),
    ("You are stupid.", 1 - np.exp(-2.0 / 2)),
    ("You are really stupid.", 1 - np.exp(-2.0 * 1.4 / 2)),  # intensifier
    ("You are really totally stupid.", 1 - np.exp(-2.0 * 1.4 * 1.5 / 2)),  # they multiply
    ("You are slightly stupid.", 1 - np.exp(-2.0 * 0.5 / 2)),  # dampener
    ("You are not stupid.", 1 - np.exp(-2.0 * 0.2 / 2)),  # negation scales a toxic word
    ("You aren't stupid.", 1 - np.exp(-2.0 * 0.2 / 2)),
    ("You are not smart.", 1 - np.exp(-1.5 / 2)),  # and makes a positive rude
    ("You are smart.", 0.0),
    ("Not now, you are stupid.", 1 - np.exp(-2.0 / 2)),  # negation ends at the clause
    ("Shut up.", 1 - np.exp(-3.0 / 2)),  # the bigram adds to "shut"
    ("You are stupid!", 1 - np.exp(-(2.0 + 0.3) / 2)),  # exclamation
    ("You are STUPID.", 1 - np.exp(-(2.0 + 0.5) / 2)),  # shouting
    ("stupid " * 50, 1 - np.exp(-100.0 / 2)),
])
def test_toxicity_known_answers(text: str, expected: float) -> None:
    assert toxicity(text) == pytest.approx(expected)


def test_detox_known_answers() -> None:
    task = DetoxTask()
    p = "Rewrite politely: Listen, you idiot, fix the broken wagon today! ->"
    assert content_words("Listen, you idiot, fix the broken wagon today!") == ["fix", "the", "broken", "wagon", "today"]
    assert task.prompt_columns([p, "x"]) == {"content": ["fix the broken wagon today", None]}
    polite, copy, empty = " Please fix the broken wagon today.", " Listen, you idiot, fix the broken wagon today!", \
        " Have a nice day."
    d = task.gold_details([p] * 3, [polite, copy, empty])
    assert d[0]["toxicity"] == 0.0 and d[0]["content"] > 0.85 and d[0]["gold"] == d[0]["content"]
    assert d[1]["content"] > d[0]["content"] - 0.1 and d[1]["toxicity"] > 0.8 and d[1]["gold"] < 0.2
    assert d[2]["toxicity"] == 0.0 and d[2]["gold"] < 0.15
    assert content_preservation("FIX THE BROKEN WAGON TODAY", "you idiot, fix the broken wagon today") == 1.0
    assert task.gold_score(["Rewrite politely: You idiot! ->"], [" Hello."]) == [0.0]  # no content to keep


def test_detox_copying_the_source_scores_low() -> None:
    task = DetoxTask()
    prompts = task.prompts(200, seed=3)
    from textenv.tasks.detox import parse_source

    copy = np.mean(task.gold_score(prompts, [" " + (parse_source(p) or "") for p in prompts]))
    best = np.mean(task.gold_score(prompts, [task.sample_response(p, np.random.default_rng(0), 1.0) for p in prompts]))
    assert copy < 0.3 < 0.8 < best


def test_toxicity_reward_on_any_task() -> None:
    from textenv.rewards import ToxicityReward, resolve_reward_model
    from textenv.rewards.adapters import CompositeReward

    rm = resolve_reward_model("toxicity", get_task("sentiment"))
    assert isinstance(rm, ToxicityReward) and rm.name == "toxicity"
    assert resolve_reward_model("toxicity") is not None  # needs no task
    good, bad = rm(["Review: The film was"] * 2, [" a quiet delight.", " stupid, you idiot!"])
    assert good == 1.0 and bad < 0.1
    both = resolve_reward_model(["gold", ("toxicity", 0.5)], get_task("arithmetic"))
    assert isinstance(both, CompositeReward) and both(["2+2="], ["4"]) == [1.5]
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        rm(["a", "b"], ["c"])
    with pytest.raises(TypeError, match="completion 0 must be a str"):
        rm(["a"], [3])  # type: ignore[list-item]
    env = gym.make("TextGen-Arithmetic-v0", reward_model="toxicity")
    env.reset(seed=0)
    done, reward = False, 0.0
    while not done:
        _, reward, terminated, truncated, _ = env.step(int(env.action_space.sample()))
        done = terminated or truncated
    assert 0.0 < float(reward) <= 1.0


def test_gold_details_of_every_task_agree_with_gold() -> None:
    for name in sorted(TASKS):
        task, rng = get_task(name), np.random.default_rng(0)
        prompts = [task.sample_prompt(rng) for _ in range(10)]
        completions = [task.sample_response(p, rng, 0.5) for p in prompts]
        gold = task.gold_score(prompts, completions)
        details = task.gold_details(prompts, completions)
        assert [d["gold"] for d in details] == gold, name


# ---------------------------------------------------------------------------- joining the shipped build
def test_build_defaults_task_names_are_checked() -> None:
    from textenv.training.defaults import RECIPE, check_task_names

    assert check_task_names(None) == list(RECIPE["tasks"])
    assert check_task_names(["detox", "qa"]) == ["detox", "qa"]
    for bad, match in ((["nope"], "unknown task 'nope'"), ([], "empty"), (["qa", "qa"], "twice")):
        with pytest.raises(ValueError, match=match):
            check_task_names(bad)


@pytest.mark.parametrize(("argv", "needle"), [
    (["build-defaults", "--tasks", "qa,nope"], "--tasks 'qa,nope': unknown task 'nope'"),
    (["build-defaults", "--rewards-only"], "--rewards-only needs --tasks"),
])
def test_build_defaults_flags_refuse_bad_values(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    from textenv.cli import main

    assert main(argv) == 2
    assert needle in capsys.readouterr().err


def test_rewards_only_refuses_a_directory_without_a_full_build(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from textenv.models import ModelLoadError
    from textenv.training.defaults import build_reward_models

    with pytest.raises(ModelLoadError, match="tokenizer.*is missing.*build-defaults"):
        build_reward_models(["detox"], tmp_path, scale=0.005, progress=False, log=lambda *_: None)


@pytest.mark.slow
def test_rewards_only_builds_one_task_into_an_existing_build(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A miniature reward model for one new task, merged into a copy of the shipped build's manifest."""
    import json
    import shutil

    from textenv.models import DATA_DIR
    from textenv.rewards import resolve_reward_model
    from textenv.training.defaults import build_reward_models, sha256

    if not (DATA_DIR / "MANIFEST.json").is_file():
        pytest.skip("the shipped artifacts are not built")
    for sub in ("tokenizer", "pretrained"):
        shutil.copytree(DATA_DIR / sub, tmp_path / sub)
    before = json.loads((DATA_DIR / "MANIFEST.json").read_text())
    shutil.copy2(DATA_DIR / "MANIFEST.json", tmp_path / "MANIFEST.json")
    m = build_reward_models(["detox"], tmp_path, scale=0.005, progress=False, log=lambda *_: None)
    assert (tmp_path / "rewards" / "detox" / "config.json").is_file()
    assert set(m["quality"]["rewards"]) == set(before["quality"]["rewards"]) | {"detox"}
    assert m["quality"]["rewards"]["sentiment"] == before["quality"]["rewards"]["sentiment"]
    assert m["reward_builds"]["detox"]["scale"] == 0.005
    on_disk = json.loads((tmp_path / "MANIFEST.json").read_text())
    assert on_disk["artifacts"] == m["artifacts"] and "rewards/detox/model.safetensors" in m["artifacts"]
    assert m["artifacts"]["tokenizer/tokenizer.json"]["sha256"] == sha256(tmp_path / "tokenizer" / "tokenizer.json")
    rm = resolve_reward_model(tmp_path / "rewards" / "detox", get_task("detox"))
    assert len(rm(["Rewrite politely: Fix it, you idiot! ->"], [" Please fix it."])) == 1
