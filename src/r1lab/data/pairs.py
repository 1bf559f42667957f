"""Preference pairs from the verifier: sample k responses per problem, verify them, and pair a
correct response (chosen) against a wrong one (rejected), as Iterative RPO, Light-R1 and EXAONE
Deep built their DPO data.

Which responses form a pair is a policy, a pure function of the completions and their verdicts
(`pick_pairs`), tested without a model. Only decided responses take part: a chosen response must
verify and be untruncated (a cut-off response is a bad target even when its answer scored); a
rejected one must be wrong or unparsable (a verifier timeout or error says nothing about the
response). A truncated wrong response is a fair rejection.

A pair is written as a problem row whose metadata holds `chosen` and `rejected` (and the pair's
provenance), so pairs flow through the same pipeline and manifest as every other step. `load_pairs`
reads those rows and also plain `{prompt, chosen, rejected}` rows from elsewhere.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from r1lab.data.reject import SampleSettings, Sampler, record_pass_rate
from r1lab.data.verify_traces import batched
from r1lab.domains import check_fields, setting
from r1lab.errors import ConfigError, DataError
from r1lab.records import Completion, Problem, Verdict, read_jsonl

CHOSEN_POLICIES = ("shortest", "random", "confident")
REJECTED_POLICIES = ("confident", "random", "longest")
REJECTABLE = ("wrong", "unparsable")


@dataclass
class PairSettings(SampleSettings):
    chosen: str = setting("shortest", choices=CHOSEN_POLICIES)  # which correct response is chosen: shortest | random | confident (highest mean log-prob)
    rejected: str = setting("confident", choices=REJECTED_POLICIES)  # which wrong response is rejected: confident (highest mean log-prob) | random | longest
    pairs_per_problem: int = setting(1, ge=1)  # pairs per problem, each with its own chosen and rejected response


@dataclass
class PreferencePair:
    id: str
    prompt: str | list[dict[str, str]]
    chosen: str
    rejected: str


def check_policies(chosen: str, rejected: str, where: str = "pairs") -> None:
    if chosen not in CHOSEN_POLICIES:
        raise ConfigError(f"{where}: unknown chosen policy {chosen!r} (known: {', '.join(CHOSEN_POLICIES)})")
    if rejected not in REJECTED_POLICIES:
        raise ConfigError(f"{where}: unknown rejected policy {rejected!r} (known: {', '.join(REJECTED_POLICIES)})")


def _confidence(c: Completion) -> float:
    return sum(c.logprobs) / len(c.logprobs) if c.logprobs else float("-inf")


def _length(c: Completion) -> int:
    n = c.num_tokens
    return n if n is not None else len(c.text)


def _rank(policy: str, idx: list[int], comps: Sequence[Completion], rng: random.Random) -> list[int]:
    """`idx` ordered best-first under the policy; ties keep the sampling order."""
    if policy == "shortest":
        return sorted(idx, key=lambda i: (_length(comps[i]), i))
    if policy == "longest":
        return sorted(idx, key=lambda i: (-_length(comps[i]), i))
    if policy == "confident":
        return sorted(idx, key=lambda i: (-_confidence(comps[i]), i))
    out = list(idx)  # random
    rng.shuffle(out)
    return out


def pick_pairs(
    completions: Sequence[Completion],
    verdicts: Sequence[Verdict],
    chosen: str = "shortest",
    rejected: str = "confident",
    n: int = 1,
    rng: random.Random | None = None,
) -> list[tuple[int, int]]:
    """Up to n (chosen index, rejected index) pairs: the i-th best correct response under `chosen`
    against the i-th best wrong one under `rejected`; no response is used twice, and a text that
    was sampled more than once counts once (its first sample)."""
    check_policies(chosen, rejected)
    rng = rng or random.Random(0)
    first: dict[str, int] = {}
    for i, c in enumerate(completions):
        first.setdefault(c.text, i)
    distinct = [i for i in range(len(completions)) if first[completions[i].text] == i]
    good = [i for i in distinct if verdicts[i].correct and not completions[i].truncated]
    bad = [i for i in distinct if verdicts[i].status in REJECTABLE]
    ranked_good = _rank(chosen, good, completions, rng)
    ranked_bad = _rank(rejected, bad, completions, rng)
    return list(zip(ranked_good, ranked_bad))[: max(0, n)]


def pair_row(p: Problem, j: int, chosen: Completion, rejected: Completion, rejected_verdict: Verdict) -> Problem:
    """One pair as a problem row (the problem's own fields, the pair in metadata)."""
    meta = {k: v for k, v in p.metadata.items() if k not in ("response", "responses")}
    meta.update(problem_id=p.id, chosen=chosen.text, rejected=rejected.text, chosen_tokens=_length(chosen),
                rejected_tokens=_length(rejected), rejected_status=rejected_verdict.status,
                rejected_truncated=rejected.truncated)
    return Problem(id=f"{p.id}#pair{j}", prompt=p.prompt, answer=p.answer, task=p.task, tests=p.tests,
                   source=p.source, metadata=meta)


def why_unpaired(completions: Sequence[Completion], verdicts: Sequence[Verdict]) -> str:
    if not any(v.correct and not c.truncated for c, v in zip(completions, verdicts)):
        return "no_correct_sample"
    return "no_wrong_sample"


def make_pairs(
    rows: Iterable[Problem],
    s: PairSettings,
    drop: Callable[[str, str, str], None],
    engine: Any = None,
    on_rate: Callable[[float], None] = lambda rate: None,
) -> Iterator[Problem]:
    """Pair rows for every problem that has both a correct and a wrong sample; the others are
    dropped with the reason (their pass rate still goes to `on_rate`). `engine` is any Engine
    (the stage passes its own; by default `s.model` is loaded)."""
    check_fields(s, "pairs")
    sampler = Sampler(s, engine)
    for chunk in batched(rows, s.chunk):
        for p, (comps, verdicts) in zip(chunk, sampler.sample(chunk)):
            rate = record_pass_rate(p, verdicts, s.model)
            on_rate(rate)
            # the random policies draw from a stream of the problem's own, so a pair does not
            # depend on which other problems share its chunk
            picks = pick_pairs(comps, verdicts, s.chosen, s.rejected, s.pairs_per_problem,
                               random.Random(f"{s.seed}:{p.id}"))
            if not picks:
                drop(p.id, why_unpaired(comps, verdicts), f"pass rate {rate:.3f} over {s.k}")
            for j, (c, r) in enumerate(picks):
                yield pair_row(p, j, comps[c], comps[r], verdicts[r])


def _text(row: dict[str, Any], key: str, where: str) -> str:
    meta = row.get("metadata") if isinstance(row.get("metadata"), dict) else {}
    value = row[key] if key in row else meta.get(key)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: '{key}' must be a non-empty string (top level or in metadata)")
    return value


def load_pairs(path: str | Path) -> list[PreferencePair]:
    """Pairs from a JSONL of {prompt, chosen, rejected} rows (`chosen` and `rejected` at the top
    level or in `metadata`, as `r1lab data pairs` writes them); `id` optional."""
    pairs = []
    for lineno, row in read_jsonl(path):
        where = f"{path}:{lineno}"
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        prompt = row.get("prompt")
        if not (isinstance(prompt, str) and prompt.strip()) and not (isinstance(prompt, list) and prompt):
            raise DataError(f"{where}: 'prompt' must be a non-empty string or a list of chat messages")
        pairs.append(PreferencePair(str(row.get("id") or f"pair{lineno}"), prompt,
                                    _text(row, "chosen", where), _text(row, "rejected", where)))
    if not pairs:
        raise DataError(f"{path}: no pairs in file")
    return pairs
