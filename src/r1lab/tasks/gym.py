"""reasoning-gym as a task source: `rg:<dataset>` in data.tasks, in `r1lab data import` and in eval.

reasoning-gym (PyPI `reasoning-gym`, extra `gym`) generates problems procedurally, each dataset with
its own `score_answer(answer, entry) -> float in [0, 1]`. r1lab draws one seed per problem from the
split's own random stream and asks reasoning-gym for the one item of that seed, so a problem is a
function of its seed alone; the held-out split draws from another stream than the training one,
and `generate_splits` rejects any training problem whose question text equals a held-out one (the
same seed gives the same question, so no seed is shared either). Each dataset runs at its default
configuration: `data.difficulty` does not change it.

The verifier ("reasoning_gym") reads the last `<answer>...</answer>` of the response, as the
other families and reasoning-gym's own evaluations do, and scores it with the dataset's
`score_answer` on the entry the problem carries (question, answer and reasoning-gym's metadata,
kept as JSON): correct iff the score is 1.0. The reward term `rg_score` is that score, partial
credit included. Every generated problem is checked at once: its gold answer must score 1.0 on
the JSON copy of its entry, else the dataset is refused (those whose puzzles have no single
reference answer, or whose metadata do not survive JSON).
"""

from __future__ import annotations

import difflib
import functools
import json
import random

from r1lab.errors import ConfigError
from r1lab.records import Problem, Verdict
from r1lab.reward_registry import register_reward
from r1lab.tasks.base import TaskFamily, extract_answer, format_trace, register_source
from r1lab.verify.registry import register_verifier

PREFIX = "rg"
TASK = "reasoning_gym"
MAX_ANSWER_CHARS = 4000  # longer answers are not scored (some scorers parse them with sympy)
NOT_SOURCES = ("composite",)  # a mixture of other datasets that needs its own configuration


@functools.lru_cache(maxsize=1)
def _rg():
    try:
        import reasoning_gym
    except ImportError:
        return None
    return reasoning_gym


def dataset_names() -> list[str]:
    """Every reasoning-gym dataset r1lab can generate from (empty without the package)."""
    rg = _rg()
    if rg is None:
        return []
    from reasoning_gym.factory import DATASETS

    return sorted(set(DATASETS) - set(NOT_SOURCES))


def name_problem(dataset: str) -> str | None:
    """What is wrong with `rg:<dataset>`: the package missing, or a name it does not know (with the
    closest names); None when it can be generated."""
    if _rg() is None:
        return "needs the package reasoning-gym: pip install 'r1lab[gym]'"
    names = dataset_names()
    if dataset in names:
        return None
    close = difflib.get_close_matches(dataset, names, n=4, cutoff=0.5)
    hint = f"; close: {', '.join(PREFIX + ':' + c for c in close)}" if close else ""
    return f"unknown reasoning-gym dataset {dataset!r}{hint} ({len(names)} datasets, e.g. rg:leg_counting)"


@functools.lru_cache(maxsize=None)
def _scorer(dataset: str):
    return _rg().get_score_answer_fn(dataset)


def entry_of(problem: Problem) -> dict:
    """The reasoning-gym entry a problem was made from, as its scorer reads it."""
    meta = problem.metadata or {}
    return {"question": meta.get("rg_question", ""), "answer": problem.answer, "metadata": meta.get("rg_metadata", {})}


def score(answer: str, problem: Problem) -> float:
    """The dataset's own score of `answer` (already extracted) on the problem's entry, in [0, 1]."""
    value = _scorer(str(problem.metadata["rg_dataset"]))(answer, entry_of(problem))
    return min(1.0, max(0.0, float(value)))


class ReasoningGymFamily(TaskFamily):
    task = TASK

    def __init__(self, dataset: str):
        self.dataset = dataset
        self.name = f"{PREFIX}:{dataset}"

    def generate(self, rng: random.Random, difficulty: int) -> Problem:
        self.check_difficulty(difficulty)
        seed = rng.randrange(2**31)  # the problem's only source of randomness
        entry = _rg().create_dataset(self.dataset, seed=seed, size=1)[0]
        try:
            metadata = json.loads(json.dumps(entry.get("metadata", {})))
        except (TypeError, ValueError):
            raise ConfigError(f"task family {self.name!r}: its entries' metadata are not JSON, so its problems "
                              "cannot be saved and scored later; not supported") from None
        problem = Problem(id="", prompt=str(entry["question"]), answer=str(entry["answer"]), task=TASK,
                          source=f"reasoning_gym/{self.dataset}",
                          metadata={"rg_dataset": self.dataset, "rg_seed": seed, "rg_question": str(entry["question"]),
                                    "rg_metadata": metadata})
        if entry["answer"] is None or score(problem.answer, problem) < 1.0:
            raise ConfigError(f"task family {self.name!r}: the gold answer of seed {seed} does not score 1.0 under "
                              "the dataset's own score_answer (no single reference answer, or metadata lost in JSON); "
                              "not supported")
        return problem

    def teacher_trace(self, problem: Problem) -> str:
        # reasoning-gym gives answers, not solutions: the trace states the answer only
        return format_trace([f"The answer is {problem.answer}."], problem.answer)


register_source(PREFIX, name_problem)(ReasoningGymFamily)


def _extracted(response: str) -> str | None:
    answer = extract_answer(response) if isinstance(response, str) else None
    return None if answer is None or len(answer) > MAX_ANSWER_CHARS else answer


@register_verifier(TASK)
def check_reasoning_gym(response: str, problem: Problem) -> Verdict:
    """Correct iff the dataset's score_answer gives the answer 1.0."""
    answer = _extracted(response)
    if answer is None:
        return Verdict("unparsable", f"no <answer>...</answer> (of at most {MAX_ANSWER_CHARS} characters) in the response")
    if name_problem(str((problem.metadata or {}).get("rg_dataset", ""))) is not None:
        return Verdict("error", f"not a reasoning-gym problem (metadata rg_dataset={problem.metadata.get('rg_dataset')!r})")
    value = score(answer, problem)
    if value >= 1.0:
        return Verdict("correct", extracted=answer)
    return Verdict("wrong", f"reasoning-gym score {value:.3g}", answer[:300])


@register_reward("rg_score")
def rg_score(problems, texts, verdicts, completions=None) -> list[float]:
    """reasoning-gym's own score of the answer, in [0, 1], partial credit included; 0 without an
    answer and for problems that are not reasoning-gym's."""
    out = []
    for p, t in zip(problems, texts):
        answer = _extracted(t)
        if answer is None or p.task != TASK:
            out.append(0.0)
            continue
        try:
            out.append(score(answer, p))
        except Exception:  # a scorer that fails on hostile text scores it 0, as an unparsable answer
            out.append(0.0)
    return out
