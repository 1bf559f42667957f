"""Multi-hop QA: generated worlds whose questions two searches answer, SQuAD-normalised exact match
and token F1 against hand-computed values and hostile answers, the environment through the
episode runner and eval, and the tiny recipe through `r1lab eval`."""

import json

import pytest
from helpers_episodes import ScriptedEngine, spelled

from r1lab.envs import make_env
from r1lab.errors import ConfigError
from r1lab.records import Problem
from r1lab.reward_registry import get_reward
from r1lab.tasks import generate_splits, get_task
from r1lab.tasks.multihop import (QUESTIONS, build_world, check_multihop, corpus_documents, document, exact_match,
                                  normalise_answer, token_f1)
from r1lab.verify import verify_batch


@pytest.fixture(scope="module")
def splits():
    return generate_splits(["multihop_qa"], 120, 40, 1, 1234)


def _between(fact: str) -> str:
    """The entity the first look-up finds: the fact's last name ("X works for Zorblax Labs." -> "Zorblax Labs")."""
    for sep in (" was founded by ", " works for ", " was born in "):
        if sep in fact:
            return fact.split(sep, 1)[1].rstrip(".")
    raise AssertionError(fact)


def test_two_searches_answer_every_question_and_the_first_alone_does_not(splits):
    train, held = splits
    assert {p.metadata["kind"] for p in held + train} == set(QUESTIONS)
    # a problem is its world: the held-out worlds are not the training ones (question texts recur)
    world = lambda p: (p.metadata["world"]["seed"], p.metadata["world"]["difficulty"])  # noqa: E731
    assert {world(p) for p in train}.isdisjoint({world(p) for p in held})
    for p in held:
        env = make_env("multihop_qa")
        env.reset(p)
        first = env.step(f"<search>{p.metadata['entity']}</search>").observation
        middle = _between(p.metadata["facts"][0])
        w = build_world(p.metadata["world"]["seed"], 1)
        assert middle in first and p.answer not in document(w, p.metadata["entity"]), (p.prompt, first)
        second = env.step(f"<search>{middle}</search>").observation
        assert p.answer in second, (p.prompt, second)
    # the world is the problem's own: another problem's world does not hold its entity
    other = build_world(held[1].metadata["world"]["seed"], 1)
    assert held[0].metadata["entity"] not in other.people and held[0].metadata["entity"] not in other.companies


def test_worlds_are_deterministic_and_teacher_traces_verify(splits):
    train, _ = splits
    p = train[0]
    w = p.metadata["world"]
    assert corpus_documents(w["seed"], w["difficulty"]) == corpus_documents(w["seed"], w["difficulty"])
    names = [d["title"] for d in corpus_documents(w["seed"], 2)]
    assert len(names) == len(set(names)) == 12 * 2 + 4 * 2 + 6 * 2
    assert all(" " not in n for n in names)  # one word a name: one token to copy for the recipe's tokenizer
    family = get_task("multihop_qa")
    # a problem is its world; one without (read from an older file) is its question
    assert family.dedupe_key(p) == f"world {w['seed']}/{w['difficulty']}"
    assert family.dedupe_key(Problem("x", "Who founded  Zorblax?", "Orelli")) == "who founded zorblax?"
    family = get_task("multihop_qa")
    assert all(check_multihop(family.teacher_trace(q), q).correct for q in train[:30])


def test_normalisation_exact_match_and_f1_by_hand():
    assert normalise_answer("  The Quenford!! ") == "quenford" and normalise_answer("A.B, an Apple") == "ab apple"
    assert exact_match("the quenford.", "Quenford") == 1.0 and exact_match("Quenford City", "Quenford") == 0.0
    # P = 1/2, R = 1 -> F1 = 2 * 0.5 * 1 / 1.5 = 2/3
    assert token_f1("Quenford Brasklow", "Quenford") == pytest.approx(2 / 3)
    # a multiset overlap: "y" twice on both sides; P = R = 2/3 -> 2/3
    assert token_f1("x y y", "y y z") == pytest.approx(2 / 3)
    # "sul" once of two predicted tokens, once of one gold token: P = 1/2, R = 1
    assert token_f1("sul sul", "the Sul") == pytest.approx(2 / 3)
    assert token_f1("Tam Orelli", "Tam Orelli") == 1.0 and token_f1("Tam", "Tam Orelli") == pytest.approx(2 / 3)
    assert token_f1("", "Quenford") == 0.0 and token_f1("the a an", "Quenford") == 0.0


GOLD = "Tam Orelli"
QUESTION = "Who founded the company Ilsa Varnek works for?"


@pytest.mark.parametrize("body, em, f1, status", [
    (GOLD, 1.0, 1.0, "correct"),
    ("the TAM orelli.", 1.0, 1.0, "correct"),
    ("Ilsa Varnek, Tam Orelli, Bo Rask, Zorblax Labs", 0.0, 2 * (2 / 8) * 1 / (2 / 8 + 1), "wrong"),  # among many
    ("['Tam Orelli', 'Bo Rask']", 0.0, 2 * (2 / 4) * 1 / (2 / 4 + 1), "wrong"),  # a list
    ("", 0.0, 0.0, "wrong"),  # empty
    (QUESTION, 0.0, 0.0, "wrong"),  # the question echoed
    ("Tam", 0.0, 2 * 1 * 0.5 / 1.5, "wrong"),
    ("x" * 2000, 0.0, 0.0, "unparsable"),  # huge: not scored
    (None, 0.0, 0.0, "unparsable"),  # no answer tags at all
])
def test_hostile_answers(body, em, f1, status):
    p = Problem("q", QUESTION, GOLD, task="multihop_qa")
    text = "no tags here, Tam Orelli" if body is None else f"<think>...</think>\n<answer>{body}</answer>"
    assert get_reward("exact_match")([p], [text], [None]) == [em]
    assert get_reward("token_f1")([p], [text], [None])[0] == pytest.approx(f1)
    assert verify_batch([p], [text], workers=0)[0].status == status
    assert check_multihop(123, p).status == "unparsable"  # a wrong type is a verdict, not a crash


def test_the_environment_through_episodes_and_eval(tiny, splits):
    from r1lab.eval.run import EpisodeSpec, evaluate
    from r1lab.rollout import SamplingParams
    from r1lab.rollout.episodes import EpisodeLimits, run_episodes, score_episodes

    tok = tiny[1]
    p = splits[1][0]
    middle = _between(p.metadata["facts"][0])
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    script = [spelled(tok, f"<search>{p.metadata['entity']}</search>"), spelled(tok, f"<search>{middle}</search>"),
              spelled(tok, f"<answer>{p.answer}</answer>") + [eos]]
    params = SamplingParams(temperature=0, max_new_tokens=200)
    limits = EpisodeLimits(max_turns=4, max_tokens=3000)
    ep = run_episodes(ScriptedEngine(tok, script, [eos]), [p], params, env="multihop_qa", limits=limits)[0]
    assert ep.finish_reason == "stop" and [t.tool_calls for t in ep.turns] == [1, 1, 0]
    assert p.answer in ep.texts[3]  # the second observation holds the answer
    score_episodes([ep], {"exact_match": 1.0, "token_f1": 0.5}, workers=0)
    assert ep.completion.reward == 1.5 and ep.completion.verdict.correct
    res = evaluate(ScriptedEngine(tok, script, [eos]), [p], params, n=1, verify_workers=0, show_progress=False,
                   episodes=EpisodeSpec("multihop_qa", {}, limits))
    assert res.summary["avg@1"] == 1.0 and res.summary["tool_calls"] == 2
    with pytest.raises(ConfigError, match="has no metadata.world"):
        make_env("multihop_qa").reset(Problem("m", "1+1?", "2"))


def test_the_tiny_recipe_runs_through_eval(tiny, tmp_path):
    from r1lab.cli import main

    model, tok = tiny
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    out = tmp_path / "eval"
    assert main(["eval", str(tmp_path / "m"), "--recipe", "recipes/tiny/multihop_qa.yaml", "--limit", "2", "--n", "1",
                 "--max-new-tokens", "8", "--out", str(out), "--quiet", "data.train_size=40", "data.sft_size=8"]) == 0
    samples = [json.loads(line) for line in (out / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 and all(s["transcript"] and s["id"].startswith("multihop_qa-") for s in samples)
    report = (out / "eval" / "summary.md").read_text()
    assert "environment multihop_qa" in report and "[model]" in report


def test_teacher_traces_are_episodes_of_the_recipes_environment(tiny, splits):
    """The teacher's traces replay through the recipe's environment: "search" ones (three in four)
    call search twice (the entity, then the bridge the first output names) and answer from the
    second output, "one" once; only the model's turns are SFT targets."""
    from collections import Counter

    from r1lab.config import load_config
    from r1lab.rollout.episodes import EpisodeLimits, trace_episode
    from r1lab.train.sft import sft_examples

    cfg = load_config("recipes/tiny/multihop_qa.yaml")
    tok = tiny[1]  # not trained on these names: more tokens than the recipe's own tokenizer gives, so more room
    limits = EpisodeLimits(cfg.env.max_turns, 4 * cfg.env.max_tokens)
    train, _ = splits
    family = get_task("multihop_qa")
    teachers = Counter(p.metadata["teacher"] for p in train)
    assert set(teachers) == {"search", "one"} and teachers["search"] > 2 * teachers["one"]
    for p in train[:24]:
        trace = family.teacher_trace(p)
        ep = trace_episode(tok, p, trace, cfg.env.name, cfg.env.settings, limits)
        calls = {"search": 2, "one": 1, "none": 0}[p.metadata["teacher"]]
        assert [t.tool_calls for t in ep.turns] == [1] * calls + [0] and ep.finish_reason == "stop"
        assert ep.who == ["model", "env"] * calls + ["model"] and check_multihop(ep.answer, p).correct
        if calls == 2:
            assert p.metadata["bridge"] in ep.texts[1] and p.answer in ep.texts[3]
            # the name as the output shows it, after a space: the same token to copy
            assert ep.texts[2] == f"<search> {p.metadata['bridge']}</search>" and f" {p.metadata['bridge']}" in ep.texts[1]
        assert ep.texts[0].endswith(f"<search> {p.metadata['entity']}</search>") and f" {p.metadata['entity']}" in p.prompt
        # the episode's text is the trace: the outputs it shows are the environment's own
        assert "".join(ep.texts) == trace
    (ex,) = sft_examples(tok, [(p, trace)], cfg.env.name, cfg.env.settings, limits)
    assert ex.mask == ep.mask
