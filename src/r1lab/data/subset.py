"""Select N examples for a small SFT set, as LIMO (Ye et al. 2025) and s1 (Muennighoff et al. 2025,
Sec. 2) did: a few hundred to a thousand problems chosen for quality, difficulty and diversity.

1. Quality, a hard filter: the row has a reasoning trace (metadata[trace_field], a text or a list);
   where `verify action=tag` left verdicts, only verified traces count; a trace must be well formed
   (`trace_format: r1`, `<think>...</think>\\n<answer>...</answer>`) and within the word bounds.
   A list of traces is cut to the ones that pass; the first is the row's trace.
2. Difficulty: the pass rate under a reference model (metadata[pass_field], as reject-sample and
   filter write it, or sampled here when `model` is set). Rows solved more often than `max_pass`
   are dropped (s1 kept only problems its reference models failed); the score prefers low pass
   rates and, with `length_weight`, long traces (s1's second proxy for difficulty).
3. Diversity: rows fall into clusters (a field: task, source, or a metadata key such as subject or
   level; or `minhash`: near-duplicate clusters of the prompts) and are taken round-robin: each
   round takes the best remaining row of every cluster, clusters ordered by that row's score. Once
   N >= the number of clusters every cluster is represented, and the clusters' counts differ by at
   most one until a cluster runs out.

score = difficulty_weight * (1 - pass rate) + length_weight * words / (most words of a candidate).
Ties, and the whole order when both weights are 0 (a random subset, spread over clusters), are
broken by a hash of (seed, id): the selection is a deterministic function of the rows and settings.
Rows pass through in input order; candidates are spooled to a temporary file, so memory holds one
small record per candidate, not the rows. Every kept row carries metadata["selection"] (rank,
round, cluster, score, pass rate, words), also written to the step's report.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from r1lab.data.dedup import DedupSettings, NearDupIndex, mask, prompt_of, tokens
from r1lab.data.reject import SampleSettings, Sampler, record_pass_rate
from r1lab.data.verify_traces import batched
from r1lab.domains import check_fields, setting
from r1lab.errors import ConfigError, DataError
from r1lab.records import Problem
from r1lab.tasks.base import TRACE_FORMAT

FORMATS = ("r1", "any")


@dataclass
class SelectSettings(SampleSettings):
    n: int = setting(1000, ge=1)  # rows to keep
    trace_field: str = "response"  # metadata key of the reasoning trace(s); "" = no trace required
    trace_format: str = setting("r1", choices=FORMATS)  # r1: <think>...</think>\n<answer>...</answer> | any
    min_trace_words: int = setting(1, ge=0)  # trace length bounds in whitespace-separated words (0 = no bound)
    max_trace_words: int = setting(0, ge=0)
    pass_field: str = setting("pass_rate", nonempty=True)  # metadata key of the pass rate under a reference model
    max_pass: float = setting(1.0, ge=0, le=1)  # drop rows with a higher pass rate (too easy)
    difficulty_weight: float = setting(1.0, ge=0)  # score weight of 1 - pass rate
    length_weight: float = setting(0.0, ge=0)  # score weight of the trace's relative length
    cluster_by: str = setting("task", nonempty=True)  # task | source | a metadata key | minhash
    cluster_threshold: float = setting(0.5, gt=0, le=1)  # minhash: estimated Jaccard similarity that joins a cluster
    ngram: int = setting(3, ge=1)  # minhash: word shingle size (numbers masked)

    def cross_check(self, where: str) -> None:
        if self.max_trace_words and self.max_trace_words < self.min_trace_words:
            raise ConfigError(f"{where}.max_trace_words={self.max_trace_words}: expected at least "
                              f"{where}.min_trace_words={self.min_trace_words} (or 0: no bound)")


@dataclass
class Candidate:
    index: int  # position in the spool (input order among candidates)
    id: str
    cluster: str
    pass_rate: float | None
    words: int
    score: float = 0.0
    tie: float = 0.0


def trace_problem(trace: str, verdict: Any, s: SelectSettings) -> str | None:
    """None if the trace passes the quality filter, else the drop reason."""
    if verdict is not None and verdict != "correct":
        return "trace_unverified"
    if s.trace_format == "r1" and not TRACE_FORMAT.match(trace.strip()):
        return "trace_malformed"
    words = len(trace.split())
    if s.min_trace_words and words < s.min_trace_words:
        return "trace_too_short"
    if s.max_trace_words and words > s.max_trace_words:
        return "trace_too_long"
    return None


def quality(p: Problem, s: SelectSettings) -> tuple[str | None, str]:
    """(None, first kept trace) and the row's trace list cut to the good ones; or (reason, detail)."""
    if not s.trace_field:
        return None, ""
    value = p.metadata.get(s.trace_field)
    traces = [value] if isinstance(value, str) else value if isinstance(value, list) else None
    if not traces or not all(isinstance(t, str) for t in traces) or not any(t.strip() for t in traces):
        return "no_trace", f"metadata[{s.trace_field!r}] is missing or empty"
    tags = p.metadata.get("trace_verdicts")
    verdicts = tags if isinstance(tags, list) and len(tags) == len(traces) else [None] * len(traces)
    reasons = [trace_problem(t, v, s) for t, v in zip(traces, verdicts)]
    good = [t for t, r in zip(traces, reasons) if r is None]
    if not good:
        return reasons[0], f"{len(traces)} trace(s), none usable"
    if isinstance(value, list):
        p.metadata[s.trace_field] = good
        if tags is not None and len(tags) == len(traces):
            p.metadata["trace_verdicts"] = [v for v, r in zip(verdicts, reasons) if r is None]
    return None, good[0]


def cluster_of(p: Problem, s: SelectSettings, index: NearDupIndex | None) -> str:
    if index is not None:
        return index.add(p.id, mask(tokens(prompt_of(p)))) or p.id  # a new cluster is named by its first row
    value = getattr(p, s.cluster_by) if s.cluster_by in ("task", "source") else p.metadata.get(s.cluster_by)
    return str(value) if value not in (None, "") else "(none)"


def tie_break(seed: int, row_id: str) -> float:
    """A number in [0, 1) fixed by (seed, id)."""
    h = hashlib.blake2b(f"{seed}\x00{row_id}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0**64


def score(cands: list[Candidate], s: SelectSettings) -> None:
    most = max((c.words for c in cands), default=0) or 1
    for c in cands:
        difficulty = 1.0 - c.pass_rate if c.pass_rate is not None else 0.0
        c.score = s.difficulty_weight * difficulty + s.length_weight * c.words / most
        c.tie = tie_break(s.seed, c.id)


def round_robin(cands: list[Candidate], n: int) -> list[tuple[Candidate, int]]:
    """Up to n candidates with the round each was taken in: per round the best remaining candidate
    of every cluster, clusters in the order of that candidate (best first)."""
    key = lambda c: (-c.score, c.tie, c.index)  # noqa: E731
    clusters: dict[str, list[Candidate]] = {}
    for c in cands:
        clusters.setdefault(c.cluster, []).append(c)
    queues = [sorted(members, key=key) for members in clusters.values()]
    picked: list[tuple[Candidate, int]] = []
    r = 0
    while len(picked) < n:
        heads = sorted((q[r] for q in queues if len(q) > r), key=key)
        if not heads:
            break
        picked += [(c, r) for c in heads[: n - len(picked)]]
        r += 1
    return picked


def select_examples(
    rows: Iterable[Problem],
    s: SelectSettings,
    drop: Callable[[str, str, str], None],
    engine: Any = None,
    on_selected: Callable[[dict[str, Any]], None] = lambda row: None,
    notes: dict[str, Any] | None = None,
) -> Iterator[Problem]:
    """The selected rows, in input order, each with metadata["selection"]; `drop(id, reason,
    detail)` for every other row; `on_selected` gets each selection record (rank order);
    `notes` receives the summary (clusters, coverage, mean pass rates before and after)."""
    check_fields(s, "select")
    needs_rate = s.difficulty_weight > 0 or s.max_pass < 1.0
    index = NearDupIndex(DedupSettings(threshold=s.cluster_threshold, ngram=s.ngram)) if s.cluster_by == "minhash" else None
    sampler: Sampler | None = None
    cands: list[Candidate] = []
    with tempfile.TemporaryDirectory(prefix="r1lab-select-") as tmp:
        spool = Path(tmp) / "candidates.jsonl"
        with spool.open("w", encoding="utf-8") as f:
            for chunk in batched(rows, s.chunk):
                good: list[tuple[Problem, str]] = []
                for p in chunk:
                    reason, detail = quality(p, s)
                    if reason is None:
                        good.append((p, detail))
                    else:
                        drop(p.id, reason, detail)
                missing = [p for p, _ in good if not isinstance(p.metadata.get(s.pass_field), (int, float))]
                if needs_rate and missing:
                    if not s.model and engine is None:
                        raise DataError(f"row {missing[0].id!r}: no metadata[{s.pass_field!r}]; run reject-sample first, "
                                        "give select a model to compute pass rates, or set difficulty_weight=0")
                    sampler = sampler or Sampler(s, engine)
                    for p, (_, verdicts) in zip(missing, sampler.sample(missing)):
                        p.metadata[s.pass_field] = record_pass_rate(p, verdicts, s.model)
                for p, trace in good:
                    rate = p.metadata.get(s.pass_field)
                    rate = float(rate) if isinstance(rate, (int, float)) else None
                    if rate is not None and rate > s.max_pass + 1e-9:
                        drop(p.id, "too_easy", f"pass rate {rate:.4g} > {s.max_pass:g}")
                        continue
                    cands.append(Candidate(len(cands), p.id, cluster_of(p, s, index), rate, len(trace.split())))
                    f.write(json.dumps(p.to_dict(), ensure_ascii=False) + "\n")
        score(cands, s)
        picked = round_robin(cands, s.n)
        chosen: dict[int, dict[str, Any]] = {}
        for rank, (c, r) in enumerate(picked):
            record = {"rank": rank, "round": r, "cluster": c.cluster, "score": round(c.score, 6),
                      "pass_rate": c.pass_rate, "words": c.words}
            chosen[c.index] = record
            on_selected({"id": c.id, **record})
        if notes is not None:
            notes.update(_summary(cands, picked, s.n))
        with spool.open("r", encoding="utf-8") as f:
            for c, line in zip(cands, f):
                if c.index in chosen:
                    p = Problem(**json.loads(line))
                    p.metadata["selection"] = chosen[c.index]
                    yield p
                else:
                    drop(c.id, "not_selected", f"cluster {c.cluster}, score {c.score:.4g}")


def _summary(cands: list[Candidate], picked: list[tuple[Candidate, int]], n: int) -> dict[str, Any]:
    def mean_rate(cs: Iterable[Candidate]) -> float | None:
        rates = [c.pass_rate for c in cs if c.pass_rate is not None]
        return round(sum(rates) / len(rates), 4) if rates else None

    per: dict[str, int] = {}
    for c, _ in picked:
        per[c.cluster] = per.get(c.cluster, 0) + 1
    clusters = {c.cluster for c in cands}
    largest = dict(sorted(per.items(), key=lambda kv: (-kv[1], kv[0]))[:20])
    return {
        "candidates": len(cands), "selected": len(picked), **({"short_of_n": n - len(picked)} if len(picked) < n else {}),
        "clusters": len(clusters), "clusters_covered": len(per), "selected_per_cluster": largest,
        "mean_pass_rate_candidates": mean_rate(cands), "mean_pass_rate_selected": mean_rate(c for c, _ in picked),
        "mean_words_candidates": round(sum(c.words for c in cands) / len(cands), 1) if cands else None,
        "mean_words_selected": round(sum(c.words for c, _ in picked) / len(picked), 1) if picked else None,
    }
