"""The records that flow between stages: problems in, completions out, verdicts on them.

Datasets on disk are JSON Lines of `Problem.to_dict()`; `Problem.from_dict` validates a row and
names the file and line when it is unusable.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, TextIO

from r1lab.errors import DataError

VERDICT_STATUSES = ("correct", "wrong", "unparsable", "timeout", "error")


@dataclass
class Problem:
    id: str
    prompt: str | list[dict[str, str]]  # plain text, or chat messages [{"role", "content"}]; see prompt_text
    answer: str  # ground truth, as text
    task: str = "math"  # which verifier scores it: "math", "countdown", ...
    tests: list[dict[str, Any]] | None = None  # for code tasks
    source: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)  # difficulty, pass rate, ...
    # images the prompt shows, in order, as PNG data URLs (r1lab/images.py reads and checks them);
    # a model sees them before the text of the first user message
    images: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        row = asdict(self)
        if not self.images:  # text problems keep the rows they always had
            del row["images"]
        return row

    @classmethod
    def from_dict(cls, row: Any, where: str = "row") -> "Problem":
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        for key in ("id", "prompt"):
            if key not in row or row[key] in (None, ""):
                raise DataError(f"{where}: missing field '{key}'")
        answer = row.get("answer")
        if answer is None or (isinstance(answer, str) and not answer.strip()):
            raise DataError(f"{where} (id {row['id']!r}): no answer — every problem needs a ground-truth 'answer'")
        known = {f for f in cls.__dataclass_fields__}
        extra = {k: v for k, v in row.items() if k not in known}
        metadata = dict(row.get("metadata") or {})
        metadata.update(extra)
        images = row.get("images") or []
        if not isinstance(images, list) or not all(isinstance(i, str) and i for i in images):
            raise DataError(f"{where} (id {row['id']!r}): 'images' must be a list of image paths or data URLs")
        return cls(
            id=str(row["id"]),
            prompt=row["prompt"],
            answer=str(answer),
            task=str(row.get("task") or "math"),
            tests=row.get("tests"),
            source=str(row.get("source") or ""),
            metadata=metadata,
            images=list(images),
        )


def prompt_messages(prompt: str | list[dict[str, str]]) -> list[dict[str, str]]:
    """The prompt as chat messages: a plain-text prompt is one user message."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def prompt_text(prompt: str | list[dict[str, str]], which: str = "question") -> str:
    """The prompt as plain text. A plain-text prompt is itself; of chat messages, `which` picks:

    - "question": the last user message, the question being asked (task parsers, the judge);
    - "user": every user message, joined by newlines: all the text the problem poses, few-shot
      examples included (dedup, decontamination, inspection);
    - "all": every message, joined by newlines: what a model without a chat template reads.

    A message without a role counts as the user's; anything that is not a message is skipped.
    """
    if which not in ("question", "user", "all"):
        raise ValueError(f"prompt_text: which must be 'question', 'user' or 'all', got {which!r}")
    if isinstance(prompt, str):
        return prompt
    messages = [m for m in prompt if isinstance(m, dict)]
    if which != "all":
        messages = [m for m in messages if m.get("role", "user") == "user"]
    if which == "question":
        messages = messages[-1:]
    return "\n".join(str(m.get("content", "")) for m in messages)


@dataclass
class Verdict:
    """What a verifier concluded about one response. Never raised, always returned."""

    status: str  # one of VERDICT_STATUSES
    reason: str = ""
    extracted: str | None = None  # the answer the verifier read from the response

    def __post_init__(self) -> None:
        if self.status not in VERDICT_STATUSES:
            raise ValueError(f"unknown verdict status {self.status!r}")

    @property
    def correct(self) -> bool:
        return self.status == "correct"


@dataclass
class Completion:
    problem_id: str
    prompt_ids: list[int]
    response_ids: list[int]
    text: str  # the decoded response (without the prompt)
    logprobs: list[float]  # per response token, under the sampling policy (temperature applied)
    finish_reason: str  # "stop" (a stop token was produced) | "length" (max_new_tokens reached)
    rewards: dict[str, float] = field(default_factory=dict)  # reward term name -> value
    reward: float = 0.0
    verdict: Verdict | None = None
    token_count: int | None = None  # response length in tokens where response_ids are unknown (endpoints)
    policy_version: int = 0  # the policy weights' version (optimizer steps) the engine sampled with (the first, under partial rollouts)
    # partial rollouts: per response token, the policy version that sampled it (weights changed
    # mid-generation); None: every token came from policy_version
    token_versions: list[int] | None = None
    think_tokens: int | None = None  # thinking tokens, where budget forcing counted them (eval/budget.py)
    # per response token: 1 = sampled by the model (carries loss), 0 = inserted by an environment (a
    # tool's output, a chat template's turn markers; its `logprobs` entry is 0.0). None: every token
    # is the model's (every one-turn rollout)
    loss_mask: list[int] | None = None
    # a multi-turn episode, for reading: (who, text) per part in order, who "model" or "env"; None otherwise
    transcript: list[tuple[str, str]] | None = None
    # the pixel inputs of the prompt's images (vision.VisionInputs), for the trainer's forward; None: text
    vision: Any = None

    @property
    def model_tokens(self) -> int:
        """The tokens the model sampled: the response minus what an environment inserted. Length
        rewards, length metrics and per-token normalisations count these."""
        return sum(self.loss_mask) if self.loss_mask is not None else len(self.response_ids)

    @property
    def num_tokens(self) -> int | None:
        """Response length in tokens: from the ids, else as the server reported it (None if it did not)."""
        return len(self.response_ids) if self.response_ids else self.token_count

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line_number, object) from a JSON Lines file; a bad line is a DataError naming it."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    lineno = 0
    with path.open("r", encoding="utf-8") as f:
        try:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        except UnicodeDecodeError:  # raised by the file's decoder, ahead of the line it is in
            raise DataError(f"{path}: not UTF-8 text (after line {lineno})") from None


def load_problems(path: str | os.PathLike) -> list[Problem]:
    """The problems of a JSONL file. Image paths are read relative to the file's directory (never
    outside it) and kept as checked PNG data URLs, like every image r1lab reads."""
    problems = []
    for lineno, row in read_jsonl(path):
        p = Problem.from_dict(row, where=f"{path}:{lineno}")
        if p.images:
            from r1lab.images import canonical_images

            p.images = canonical_images(p.images, Path(path).parent, f"{path}:{lineno}")
        problems.append(p)
    if not problems:
        raise DataError(f"{path}: no problems in file")
    return problems


@contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[TextIO]:
    """A text file written under a temporary name beside `path` and renamed over it when the block
    ends; on an error the temporary file is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; the output is an ordinary file
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> None:
    """Write atomically: a temporary file in the same directory, renamed when complete."""
    with atomic_open(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def save_problems(path: str | os.PathLike, problems: Iterable[Problem]) -> None:
    write_jsonl(path, (p.to_dict() for p in problems))
