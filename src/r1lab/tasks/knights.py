"""Knights and Knaves (Logic-RL): knights always tell the truth, knaves always lie; who is which?

Difficulty d = number of people (up to 12; 1 is treated as 2, because no one-person puzzle has a
unique answer, and every family must accept difficulty 1). Each person makes one statement of a few kinds (about one
person, two people joined by and/or, same/different kind). Puzzles are drawn at random and kept
only when a brute-force solver over all 2^d assignments finds exactly one solution.

The answer is "Ann is a knight, Bob is a knave, ..." in the puzzle's order of names; the verifier
accepts any order, case and separator, but every person exactly once.
"""

from __future__ import annotations

import itertools
import random
import re
from typing import Any

from r1lab.errors import ConfigError
from r1lab.records import Problem, Verdict
from r1lab.tasks.base import TaskFamily, extract_answer, format_trace, register_task
from r1lab.verify.registry import register_verifier

NAMES = ["Ann", "Bob", "Cal", "Dee", "Eve", "Fay", "Gus", "Hal", "Ivy", "Jon", "Kim", "Lou", "Max", "Ned", "Oda", "Pam"]
MAX_PEOPLE = 12
_RULES = "Knights always tell the truth. Knaves always lie."
_ROLE = re.compile(r"\b([A-Za-z]+)\s*(?:is|was|=|:|-)?\s*(?:an?\s+)?(knight|knave)s?\b", re.IGNORECASE)

# A statement is a small tree: ("is", i, True=knight) | ("and"|"or", s1, s2) | ("same"|"diff", i, j)
Statement = tuple


def truth(s: Statement, roles: tuple[bool, ...]) -> bool:
    """Whether statement `s` holds when roles[i] is True for knights."""
    kind = s[0]
    if kind == "is":
        return roles[s[1]] == s[2]
    if kind == "and":
        return truth(s[1], roles) and truth(s[2], roles)
    if kind == "or":
        return truth(s[1], roles) or truth(s[2], roles)
    if kind == "same":
        return roles[s[1]] == roles[s[2]]
    if kind == "diff":
        return roles[s[1]] != roles[s[2]]
    raise ValueError(f"unknown statement kind {kind!r}")


def solve(statements: list[Statement], limit: int = 2) -> list[tuple[bool, ...]]:
    """Every assignment (True = knight) under which each speaker is truthful iff a knight; at most `limit`."""
    found = []
    for roles in itertools.product((True, False), repeat=len(statements)):
        if all(truth(s, roles) == roles[i] for i, s in enumerate(statements)):
            found.append(roles)
            if len(found) >= limit:
                break
    return found


def say(s: Statement, names: list[str], speaker: int) -> str:
    """English for a statement, as the speaker says it."""

    def who(i: int) -> str:
        return "I" if i == speaker else names[i]

    def atom(i: int, knight: bool) -> str:
        return f"{who(i)} {'am' if i == speaker else 'is'} a {'knight' if knight else 'knave'}"

    kind = s[0]
    if kind == "is":
        return atom(s[1], s[2])
    if kind in ("and", "or"):
        return f"{say(s[1], names, speaker)} {kind} {say(s[2], names, speaker)}"
    both = f"{who(s[1])} and {who(s[2])}"
    return f"{both} are the same kind" if kind == "same" else f"{both} are different kinds"


def _random_statement(rng: random.Random, speaker: int, n: int) -> Statement:
    others = [i for i in range(n) if i != speaker]
    kind = rng.choice(["is", "is", "and", "or", "same", "diff"])
    if kind == "is":
        return ("is", rng.choice(others), rng.random() < 0.5)
    if kind in ("and", "or"):
        a, b = rng.sample(others, 2) if len(others) >= 2 else (others[0], speaker)
        return (kind, ("is", a, rng.random() < 0.5), ("is", b, rng.random() < 0.5))
    pair = rng.sample(range(n), 2) if rng.random() < 0.3 else rng.sample(others, 2) if len(others) >= 2 else [speaker, others[0]]
    return (kind, pair[0], pair[1])


def answer_text(names: list[str], roles: tuple[bool, ...] | list[bool]) -> str:
    return ", ".join(f"{name} is a {'knight' if r else 'knave'}" for name, r in zip(names, roles))


def parse_roles(text: str, names: list[str]) -> dict[str, bool] | None:
    """{name: is_knight} naming each of `names` exactly once (any order, case, separators); None when
    a person is missing, named twice, or someone unknown is given a role."""
    known = {n.lower(): n for n in names}
    roles: dict[str, bool] = {}
    for m in _ROLE.finditer(text):
        name = known.get(m.group(1).lower())
        if name is None or name in roles:
            return None
        roles[name] = m.group(2).lower() == "knight"
    return roles if len(roles) == len(names) else None


def _to_json(s: Statement) -> list[Any]:
    return [s[0], *(_to_json(x) if isinstance(x, tuple) else x for x in s[1:])]


@register_task("knights")
class Knights(TaskFamily):
    task = "knights"
    min_difficulty = 1

    def check_difficulty(self, difficulty: int) -> None:
        super().check_difficulty(difficulty)
        if difficulty > MAX_PEOPLE:
            raise ConfigError(f"task family 'knights': difficulty (people) must be <= {MAX_PEOPLE}, got {difficulty}")

    def generate(self, rng: random.Random, difficulty: int) -> Problem:
        self.check_difficulty(difficulty)
        n = max(2, difficulty)
        names = rng.sample(NAMES, n)
        for _ in range(5000):
            statements = [_random_statement(rng, i, n) for i in range(n)]
            solutions = solve(statements)
            if len(solutions) == 1:
                break
        else:  # pragma: no cover - unique puzzles are common at every size we allow
            raise RuntimeError(f"knights: no puzzle with a unique solution for {n} people")
        lines = [f'{names[i]} says: "{say(s, names, i)}."' for i, s in enumerate(statements)]
        prompt = f"{_RULES} {' '.join(lines)} Who is a knight and who is a knave?"
        return Problem(
            id="",
            prompt=prompt,
            answer=answer_text(names, solutions[0]),
            task=self.task,
            metadata={"people": names, "statements": [_to_json(s) for s in statements]},
        )

    def teacher_trace(self, problem: Problem) -> str:
        """The solution, then each statement checked against it: short enough for a tiny model."""
        meta = problem.metadata or {}
        if not isinstance(meta.get("people"), list) or not isinstance(meta.get("statements"), list):
            raise ValueError(f"problem {problem.id!r}: a knights trace needs metadata['people'] and ['statements']")
        names = list(meta["people"])
        statements = [_from_json(s) for s in meta["statements"]]
        solutions = solve(statements)
        if len(solutions) != 1:
            raise ValueError(f"problem {problem.id!r}: the statements have {len(solutions)} solutions, not one")
        roles = solutions[0]
        steps = []
        for i, s in enumerate(statements):
            role = "knight" if roles[i] else "knave"
            steps.append(f"{names[i]} {role}: {say(s, names, i)} is {'true' if truth(s, roles) else 'false'}.")
        return format_trace(steps, answer_text(names, roles))


def _from_json(x: Any) -> Any:
    return tuple(_from_json(y) for y in x) if isinstance(x, list) else x


@register_verifier("knights", answer_only=True)
def check_knights(response: str, problem: Problem) -> Verdict:
    """Correct iff the last <answer> gives every person (from the gold answer) the gold role."""
    gold_names = [m.group(1) for m in _ROLE.finditer(problem.answer)]
    gold = parse_roles(problem.answer, gold_names)
    if not gold_names or gold is None:
        return Verdict("error", f"gold answer {problem.answer!r} is not a list of 'NAME is a knight/knave'")
    answer = extract_answer(response) if isinstance(response, str) else None
    if answer is None:
        return Verdict("unparsable", "no <answer>...</answer> in the response")
    shown = answer if len(answer) <= 300 else answer[:300] + "..."
    got = parse_roles(answer, gold_names)
    if got is None:
        return Verdict("unparsable", f"the answer must give each of {', '.join(gold_names)} a role exactly once", shown)
    wrong = [n for n in gold_names if got[n] != gold[n]]
    if wrong:
        return Verdict("wrong", f"wrong role for {', '.join(wrong)}", shown)
    return Verdict("correct", extracted=shown)
