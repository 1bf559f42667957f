"""Generated task families: the shared base class, the registry, and train/eval split generation.

A family turns a seeded RNG and a difficulty into `Problem`s whose answers are exactly checkable,
and writes a correct R1-format teacher trace for any of them (the SFT data). The texts are short
and regular on purpose: the models trained on them are tiny.
"""

from __future__ import annotations

import ast
import random
import re
from fractions import Fraction
from typing import Callable, TypeVar

from r1lab.errors import ConfigError
from r1lab.records import Problem, prompt_text

# The exact shape of a teacher trace; a well-formed response from a trained model has it too.
TRACE_FORMAT = re.compile(r"^<think>.*</think>\n<answer>.*</answer>$", re.DOTALL)

_ANSWER_CLOSE = "</answer>"
_ANSWER_OPEN = "<answer>"


class TaskFamily:
    """One kind of generated problem. Subclasses set `name`/`task` and implement the two methods.

    `name` is what recipes list under data.tasks; `task` is the verifier that scores the problems
    (Problem.task), so several families can share one verifier (e.g. everything numeric -> "math").
    """

    name: str = ""
    task: str = ""
    min_difficulty: int = 1
    # the tools an environment may offer on this family's problems (env.settings.tools is checked
    # against it); None: any tool
    tools: tuple[str, ...] | None = None

    def generate(self, rng: random.Random, difficulty: int) -> Problem:
        """One problem (id left empty: generate_splits numbers them). Uses only `rng` for randomness."""
        raise NotImplementedError

    def teacher_trace(self, problem: Problem) -> str:
        """A correct response, exactly `<think>STEPS</think>\\n<answer>ANSWER</answer>`."""
        raise NotImplementedError

    def dedupe_key(self, problem: Problem) -> str:
        """Two problems with the same key are the same problem (train and eval never share one).

        The default is the prompt with case and whitespace normalised; families whose prompts
        can say the same thing in several ways (e.g. numbers in any order) override it.
        """
        return normalise_text(prompt_text(problem.prompt))

    def check_difficulty(self, difficulty: int) -> None:
        if not isinstance(difficulty, int) or difficulty < self.min_difficulty:
            raise ConfigError(
                f"task family {self.name!r}: difficulty must be an integer >= {self.min_difficulty}, got {difficulty!r}"
            )


class TaskRegistry(dict):
    """name -> the family registered under it; and families made on demand for `PREFIX:NAME`
    (`rg:leg_counting`: a reasoning-gym dataset), which it does not list (there are a hundred) but
    knows: `makes(name)`, `name_problem(name)` (the config's domain check asks both), `get_task(name)`."""

    def __init__(self) -> None:
        super().__init__()
        self.sources: dict[str, tuple[Callable[[str], TaskFamily], Callable[[str], str | None]]] = {}
        self.made: dict[str, TaskFamily] = {}

    def makes(self, name: str) -> bool:
        return name.partition(":")[0] in self.sources and ":" in name

    def name_problem(self, name: str) -> str | None:
        """What is wrong with a `PREFIX:NAME` name (unknown name, missing package), or None."""
        prefix, _, rest = name.partition(":")
        return self.sources[prefix][1](rest)

    def family(self, name: str) -> TaskFamily:
        if (problem := self.name_problem(name)) is not None:
            raise ConfigError(f"task family {name!r}: {problem}")
        if name not in self.made:
            prefix, _, rest = name.partition(":")
            self.made[name] = self.sources[prefix][0](rest)
            self.made[name].name = name
        return self.made[name]


TASKS: TaskRegistry = TaskRegistry()

_F = TypeVar("_F", bound=type[TaskFamily])


def register_task(name: str) -> Callable[[_F], _F]:
    """Class decorator: instantiate the family once and list it under `name`."""

    def deco(cls: _F) -> _F:
        if name in TASKS:
            raise ValueError(f"task family {name!r} is already registered")
        cls.name = name
        TASKS[name] = cls()
        return cls

    return deco


def register_source(prefix: str, check: Callable[[str], str | None]) -> Callable[[Callable[[str], TaskFamily]], Callable[[str], TaskFamily]]:
    """Decorator: `factory(name)` makes the family of `PREFIX:name` on first use; `check(name)` says
    what is wrong with a name (None: it can be made)."""

    def deco(factory: Callable[[str], TaskFamily]) -> Callable[[str], TaskFamily]:
        TASKS.sources[prefix] = (factory, check)
        return factory

    return deco


def get_task(name: str) -> TaskFamily:
    if name not in TASKS and TASKS.makes(name):
        return TASKS.family(name)
    if name not in TASKS:
        known = ", ".join(sorted(TASKS) + [f"{prefix}:<name>" for prefix in sorted(TASKS.sources)]) or "(none)"
        raise ConfigError(f"unknown task family {name!r}; known: {known}")
    return TASKS[name]


# --- text helpers -----------------------------------------------------------------------------


def normalise_text(text: str) -> str:
    return " ".join(text.lower().split())


def format_trace(steps: list[str], answer: str) -> str:
    return f"<think>{chr(10).join(steps)}</think>\n<answer>{answer}</answer>"


def extract_answer(text: str) -> str | None:
    """The content of the LAST `<answer>...</answer>` (stripped), or None when there is none.

    "Last" means the last closing tag and the nearest opening tag before it, so a stray or nested
    opening tag earlier in the text does not swallow the answer.
    """
    end = text.rfind(_ANSWER_CLOSE)
    if end < 0:
        return None
    start = text.rfind(_ANSWER_OPEN, 0, end)
    if start < 0:
        return None
    return text[start + len(_ANSWER_OPEN) : end].strip()


# --- safe arithmetic expressions (never eval) ------------------------------------------------

BIN_OPS: dict[type[ast.operator], str] = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_EXPR_CHARS = re.compile(r"^[0-9+\-*/() ]*$")


def parse_expression(text: str, max_chars: int = 200, max_depth: int = 32, max_literal: int = 10**6) -> ast.expr:
    """Parse `text` as an expression of non-negative integer literals, + - * / and parentheses.

    Raises ValueError with a short reason for anything else. Length, characters and parenthesis
    depth are checked before `ast.parse` sees the text, so hostile input cannot make it slow.
    """
    text = " ".join(text.split())
    if not text:
        raise ValueError("empty expression")
    if len(text) > max_chars:
        raise ValueError(f"expression longer than {max_chars} characters")
    if not _EXPR_CHARS.match(text):
        bad = sorted({c for c in text if not _EXPR_CHARS.match(c)})
        raise ValueError(f"characters not allowed in an expression: {''.join(bad)!r}")
    depth = 0
    for c in text:
        depth += (c == "(") - (c == ")")
        if depth > max_depth:
            raise ValueError(f"parentheses nested deeper than {max_depth}")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise ValueError("not a valid expression") from None
    _check_node(tree.body, 0, max_depth * 2 + 8, max_literal)
    return tree.body


def _check_node(node: ast.AST, depth: int, max_depth: int, max_literal: int) -> None:
    if depth > max_depth:
        raise ValueError("expression nested too deeply")
    if isinstance(node, ast.BinOp):
        if type(node.op) not in BIN_OPS:
            raise ValueError(f"operator {type(node.op).__name__} not allowed (only + - * /)")
        _check_node(node.left, depth + 1, max_depth, max_literal)
        _check_node(node.right, depth + 1, max_depth, max_literal)
    elif isinstance(node, ast.Constant) and type(node.value) is int:
        if node.value > max_literal:
            raise ValueError(f"number {node.value} too large")
    elif isinstance(node, ast.UnaryOp):
        raise ValueError("unary operators not allowed")
    else:
        raise ValueError(f"{type(node).__name__} not allowed in an expression")


def expression_literals(node: ast.expr) -> list[int]:
    """The integer literals of a parsed expression, left to right."""
    if isinstance(node, ast.BinOp):
        return expression_literals(node.left) + expression_literals(node.right)
    assert isinstance(node, ast.Constant)
    return [int(node.value)]


def evaluate(node: ast.expr) -> Fraction:
    """Exact value of a parsed expression; ZeroDivisionError propagates."""
    if isinstance(node, ast.Constant):
        return Fraction(int(node.value))
    assert isinstance(node, ast.BinOp)
    return apply_op(BIN_OPS[type(node.op)], evaluate(node.left), evaluate(node.right))


def apply_op(op: str, a: Fraction, b: Fraction) -> Fraction:
    return a + b if op == "+" else a - b if op == "-" else a * b if op == "*" else a / b


def evaluate_steps(node: ast.expr) -> tuple[Fraction, list[str]]:
    """Exact value of a parsed expression and its steps, innermost-left first: `a op b = c`.

    ZeroDivisionError propagates. Steps are how teacher traces show their work.
    """
    if isinstance(node, ast.Constant):
        return Fraction(int(node.value)), []
    assert isinstance(node, ast.BinOp)
    a, left = evaluate_steps(node.left)
    b, right = evaluate_steps(node.right)
    op = BIN_OPS[type(node.op)]
    value = apply_op(op, a, b)
    return value, left + right + [f"{format_number(a)} {op} {format_number(b)} = {format_number(value)}"]


def format_number(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


# --- splits -----------------------------------------------------------------------------------


def _fill(
    family: TaskFamily, count: int, rng: random.Random, difficulty: int, taken: set[str], split: str, before: int
) -> list[Problem]:
    """`count` problems whose keys are not in `taken` (which grows with them).

    Gives up, as a ConfigError, after 20 tries per problem asked for, or after a long run of only
    duplicates: generous for a space a few times larger than needed, quick for one far too small.
    """
    out: list[Problem] = []
    tries = stall = 0
    while len(out) < count:
        if tries >= 20 * count + 2000 or stall >= 2000 + 2 * (before + len(out)):
            raise ConfigError(
                f"task family {family.name!r} at difficulty {difficulty}: its problem space is too small — "
                f"after {tries} tries only {before + len(out)} distinct problems were found "
                f"({before} already in earlier splits), {count - len(out)} short of the {count} {split} problems "
                f"asked for; raise data.difficulty or lower train_size/eval_size"
            )
        tries += 1
        stall += 1
        problem = family.generate(rng, difficulty)
        key = family.dedupe_key(problem)
        if key in taken:
            continue
        taken.add(key)
        out.append(problem)
        stall = 0
    return out


def generate_splits(
    tasks: list[str], train_size: int, eval_size: int, difficulty: int, seed: int
) -> tuple[list[Problem], list[Problem]]:
    """Deterministic (train, eval) problems mixing the families round-robin, sharing no problem.

    Eval is generated first and train rejects anything already taken. Each (split, family) draws
    from its own seeded stream, so a family's eval set does not change when train_size or the
    other listed families change. Ids are `<family>-<6 digits>`, numbered per family across both
    splits (eval first), so they are unique over the union.
    """
    names = list(dict.fromkeys(tasks))
    if not names:
        raise ConfigError("data.tasks is empty: list at least one task family, e.g. arithmetic")
    if train_size < 0 or eval_size < 0:
        raise ConfigError(f"split sizes must be >= 0, got train_size={train_size}, eval_size={eval_size}")
    families = [get_task(n) for n in names]
    for fam in families:
        fam.check_difficulty(difficulty)

    taken: set[str] = set()
    next_id = {fam.name: 0 for fam in families}

    def split(name: str, size: int) -> list[Problem]:
        k = len(families)
        per_family = {
            fam.name: _fill(
                fam,
                len(range(i, size, k)),
                random.Random(f"r1lab/{seed}/{name}/{fam.name}/{difficulty}"),
                difficulty,
                taken,
                name,
                next_id[fam.name],
            )
            for i, fam in enumerate(families)
        }
        out: list[Problem] = []
        for j in range(size):
            fam = families[j % k]
            p = per_family[fam.name][j // k]
            p.id = f"{fam.name}-{next_id[fam.name]:06d}"
            next_id[fam.name] += 1
            p.task = fam.task
            p.metadata = {**p.metadata, "family": fam.name, "difficulty": difficulty}
            out.append(p)
        return out

    eval_problems = split("eval", eval_size)
    train_problems = split("train", train_size)
    return train_problems, eval_problems


def teacher_dataset(problems: list[Problem]) -> list[tuple[Problem, str]]:
    """(problem, teacher response) pairs for SFT; the family is read from metadata["family"]."""
    out = []
    for p in problems:
        family = p.metadata.get("family")
        if not family:
            raise ConfigError(f"problem {p.id!r} has no metadata['family']: no teacher can write its trace")
        out.append((p, get_task(str(family)).teacher_trace(p)))
    return out
