"""Test-time search with a step scorer (a process reward model, eval/scorers.py).

Selection among N sampled completions (the first N of the same samples at every N, so the points
of a curve are nested):
- best-of-N: the completion the scorer rates highest (ties: the earliest);
- PRM-weighted voting: each completion votes for its answer with weight sigmoid(score) (the implicit
  PRM's score is a logit, its sigmoid the PRM's probability of a correct outcome; for any scorer a
  positive weight, monotone in the score); the answer with the largest sum wins;
- majority voting, the baseline: the same vote with weight 1.
Completions without an answer do not vote. Answers are grouped as the same answer when they are
equal after collapsing whitespace (as maj@k in eval/metrics.py groups them) or, for a task whose
verifier compares an answer with the gold alone (math, knights), when that verifier accepts one
with the other as gold ("0.5" and "1/2"). A vote picks the group first seen among equal sums.

Step-level beam search (`beam_search`): the response grows a step at a time, a step ending with
`delimiter` inside the thinking (before `think_end`; after it the rest of the response is one
step). The first round samples W * E first steps; every kept beam is then continued E times; of
each round's distinct candidates (equal token ids count once) the scorer's top W are kept (ties:
the earliest); kept candidates that
ended (an end-of-sequence token, or the response's token budget) are set aside as finished, the
others go on. The search stops when no beam is open or after `max_steps` rounds (open beams then
end as they are); the answer is the finished beam with the highest score. A step is continued
from the token ids the model wrote (never re-tokenised): a step ends after the token that holds
the delimiter, with whatever that token holds after it.

Compute is counted as the engine's output: every generated token of every candidate, kept or not
(`tokens`), and the candidates sampled (`expansions`); the scorer's own forward passes are
reported apart (`scored`: distinct partials scored).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

from r1lab.errors import ConfigError
from r1lab.records import Problem, prompt_text
from r1lab.rollout.base import Engine, SamplingParams, encode_prompts
from r1lab.verify import verify_batch
from r1lab.verify.registry import entry

METHODS = ("best_of_n", "weighted_vote", "beam")
BEAM_SEED_STRIDE = 7_919  # round r of a beam search samples with seed + r * stride


# --- selection among N completions -----------------------------------------------------------------


def best_of_n(scores: Sequence[float], n: int | None = None) -> int | None:
    """Index of the highest of the first n scores (ties: the earliest); None when there are none.
    A NaN score never wins."""
    xs = list(scores)[: len(scores) if n is None else n]
    best = None
    for i, s in enumerate(xs):
        if not math.isnan(s) and (best is None or s > xs[best]):
            best = i
    return best


def vote(groups: Sequence[int | None], weights: Sequence[float], n: int | None = None) -> int | None:
    """The answer group with the largest summed weight among the first n samples (`groups[i]`: the
    answer group of sample i, None = no answer, no vote); ties go to the group seen first. Returns
    the index of the group's first sample in the first n, or None when no sample voted."""
    n = len(groups) if n is None else n
    total: dict[int, float] = {}
    first: dict[int, int] = {}
    for i, (g, w) in enumerate(zip(groups[:n], weights[:n])):
        if g is None:
            continue
        total[g] = total.get(g, 0.0) + float(w)
        first.setdefault(g, i)
    if not total:
        return None
    best = max(total, key=lambda g: (total[g], -first[g]))
    return first[best]


def vote_weight(score: float) -> float:
    """A score as a vote's weight: its sigmoid, computed without overflow."""
    if math.isnan(score):
        return 0.0
    if score >= 0:
        return 1.0 / (1.0 + math.exp(-score))
    e = math.exp(score)
    return e / (1.0 + e)


def _norm(answer: str) -> str:
    return " ".join(str(answer).split())


def answer_groups(problems: Sequence[Problem], answers: Sequence[Sequence[str | None]], timeout: float = 5.0,
                  workers: int = 2) -> list[list[int | None]]:
    """For each problem, the answer group of each of its samples' extracted answers (None for no
    answer). Same group: equal after collapsing whitespace, or, when the problem's verifier compares
    with the gold answer alone, accepted by it with the earlier answer as the gold. Groups are
    numbered in order of first appearance. All the comparisons go to one verify_batch call."""
    keys = [[None if a is None else _norm(a) for a in row] for row in answers]
    distinct = [list(dict.fromkeys(k for k in row if k is not None)) for row in keys]
    pairs: list[tuple[int, int, int]] = []  # (problem, earlier key, later key)
    for pi, (p, ds) in enumerate(zip(problems, distinct)):
        if len(ds) > 1 and entry(p.task).answer_only:
            pairs += [(pi, a, b) for b in range(len(ds)) for a in range(b)]
    same: set[tuple[int, int, int]] = set()
    if pairs:
        gold = [replace(problems[pi], answer=distinct[pi][a]) for pi, a, _ in pairs]
        verdicts = verify_batch(gold, [f"<answer>{distinct[pi][b]}</answer>" for pi, _, b in pairs],
                                timeout=timeout, workers=workers)
        same = {t for t, v in zip(pairs, verdicts) if v.correct}
    out = []
    for pi, (row, ds) in enumerate(zip(keys, distinct)):
        group = list(range(len(ds)))
        for b in range(len(ds)):  # join the group of the earliest equivalent answer
            for a in range(b):
                if (pi, a, b) in same:
                    group[b] = group[a]
                    break
        renum = {g: i for i, g in enumerate(dict.fromkeys(group))}
        index = {k: renum[group[i]] for i, k in enumerate(ds)}
        out.append([None if k is None else index[k] for k in row])
    return out


def selection_row(samples: list[dict[str, Any]], groups: list[int | None], n: int) -> dict[str, Any]:
    """What each method picks among the first n scored samples (each with "score", "correct",
    "length") and whether it is right; a vote is right when its group holds a correct sample."""
    first = samples[:n]
    scores = [s["score"] for s in first]

    def group_correct(i: int | None) -> bool:
        return i is not None and any(s["correct"] for s, g in zip(first, groups) if g == groups[i])

    b = best_of_n(scores)
    w = vote(groups, [vote_weight(x) for x in scores], n)
    m = vote(groups, [1.0] * n, n)
    return {
        "n": n, "tokens": sum(s.get("length") or 0 for s in first),
        "best_of_n": b, "best_of_n_correct": b is not None and bool(first[b]["correct"]),
        "weighted_vote": w, "weighted_vote_correct": group_correct(w),
        "majority": m, "majority_correct": group_correct(m),
        "any_correct": any(s["correct"] for s in first),
    }


def selection_points(rows: list[dict[str, Any]], ns: list[int]) -> list[dict[str, Any]]:
    """Per N: the mean over problems of each method's accuracy and of the generated tokens."""
    points = []
    for n in ns:
        sel = [r["selection"][str(n)] for r in rows]
        k = max(len(sel), 1)
        points.append({"n": n, "samples": n, "tokens_per_problem": sum(s["tokens"] for s in sel) / k,
                       **{m: sum(s[f"{m}_correct"] for s in sel) / k for m in ("best_of_n", "weighted_vote", "majority")},
                       "any_correct": sum(s["any_correct"] for s in sel) / k})
    return points


# --- step-level beam search ------------------------------------------------------------------------


@dataclass
class Beam:
    ids: list[int] = field(default_factory=list)  # the response's token ids so far
    text: str = ""  # their text (without a final end-of-sequence token)
    steps: int = 0
    score: float = 0.0
    finish: str = ""  # "" while open; "stop" (end of sequence), "length" (token budget), "steps" (round budget)


@dataclass
class BeamResult:
    beams: list[Beam]  # the finished beams, in the order they finished
    best: int | None  # index of the chosen one
    tokens: int = 0  # generated tokens, all candidates
    expansions: int = 0  # candidates sampled
    scored: int = 0  # partials the scorer rated
    rounds: int = 0


def beam_sizes(n: int, width: int = 0, expand: int = 4) -> tuple[int, int]:
    """(W, E) for a budget of n candidates per round: E = min(expand, n) and W = n // E, or with a
    fixed width, W = min(width, n) and E = n // W."""
    if n < 1 or expand < 1 or width < 0:
        raise ConfigError(f"beam search needs n >= 1, beam_expand >= 1, beam_width >= 0 (got {n}, {expand}, {width})")
    if width:
        w = min(width, n)
        return w, n // w
    e = min(expand, n)
    return n // e, e


def top_k(scores: Sequence[float], k: int) -> list[int]:
    """Indices of the k highest scores, best first (ties: the earliest; NaN last)."""
    key = lambda i: (math.isnan(scores[i]), -scores[i] if not math.isnan(scores[i]) else 0.0, i)  # noqa: E731
    return sorted(range(len(scores)), key=key)[:k]


def beam_search(engine: Engine, scorer: Any, problems: list[Problem], params: SamplingParams, width: int, expand: int,
                delimiter: str = "\n", think_end: str = "</think>", step_tokens: int = 48, max_steps: int = 32,
                seed: int | None = None, on_round: Callable[[int], None] | None = None) -> list[BeamResult]:
    """Beam search for each problem at once (all problems' candidates in one engine call per round
    and budget); see the module's docstring. `params.max_new_tokens` bounds each beam's response.
    The engine must continue token-id prefixes (`generate_ids`) and have a `tokenizer`."""
    if not engine.continues_ids:
        raise ConfigError("beam search needs a local model (an engine that continues token-id prefixes), not an endpoint")
    if width < 1 or expand < 1 or step_tokens < 1 or max_steps < 1:
        raise ConfigError(f"beam search needs width, expand, step_tokens and max_steps >= 1 "
                          f"(got {width}, {expand}, {step_tokens}, {max_steps})")
    tok = engine.tokenizer
    enc = encode_prompts(tok, problems)
    texts = [prompt_text(p.prompt, "all") for p in problems]
    stop_ids = set(engine.stop_ids) | set(params.stop_token_ids)
    budget = params.max_new_tokens
    results = [BeamResult([], None) for _ in problems]
    active: list[list[Beam]] = [[Beam()] for _ in problems]
    for rnd in range(max_steps):
        requests: list[tuple[int, Beam]] = []
        for pi, beams in enumerate(active):
            for b in beams:
                requests += [(pi, b)] * (width * expand if rnd == 0 else expand)
        if not requests:
            break
        # one engine call per (stop strings, room) so that no row decodes past its own budget
        calls: dict[tuple[tuple[str, ...], int], list[int]] = {}
        for i, (pi, b) in enumerate(requests):
            thinking = bool(delimiter) and not (think_end and think_end in enc[pi].prefill + b.text)
            calls.setdefault(((delimiter,) if thinking else (), min(step_tokens, budget - len(b.ids))), []).append(i)
        outs: list[Any] = [None] * len(requests)
        for c_no, ((stops, room), idx) in enumerate(sorted(calls.items())):
            p = replace(params, max_new_tokens=room, stop=stops)
            s = None if seed is None else seed + rnd * BEAM_SEED_STRIDE + c_no
            comps = engine.generate_ids([enc[requests[i][0]].ids + requests[i][1].ids for i in idx], p, seed=s)
            for i, c in zip(idx, comps):
                outs[i] = c
        candidates: list[list[Beam]] = [[] for _ in problems]
        seen: list[set[tuple[int, ...]]] = [set() for _ in problems]
        for (pi, b), c in zip(requests, outs):
            new = list(c.response_ids)
            results[pi].tokens += len(new)
            results[pi].expansions += 1
            ids = b.ids + new
            if tuple(ids) in seen[pi]:  # equal candidates count once (the first)
                continue
            seen[pi].add(tuple(ids))
            ended = c.finish_reason == "stop" and bool(new) and new[-1] in stop_ids
            text = tok.decode(ids[:-1] if ended else ids, skip_special_tokens=False)
            finish = "stop" if ended else ("length" if len(ids) >= budget else "")
            candidates[pi].append(Beam(ids, text, b.steps + 1, 0.0, finish))
        flat = [(pi, cand) for pi, cs in enumerate(candidates) for cand in cs]
        scores = scorer.score([texts[pi] for pi, _ in flat], [enc[pi].prefill + cand.text for pi, cand in flat])
        for (pi, cand), s in zip(flat, scores):
            cand.score = float(s)
            results[pi].scored += 1
        for pi, cs in enumerate(candidates):
            if not cs:
                continue
            kept = [cs[i] for i in top_k([c.score for c in cs], width)]
            results[pi].beams += [c for c in kept if c.finish]
            active[pi] = [c for c in kept if not c.finish]
            results[pi].rounds = rnd + 1
        if on_round:
            on_round(rnd + 1)
    for pi, beams in enumerate(active):
        for b in beams:  # the round budget ran out: open beams end as they are
            b.finish = "steps"
        results[pi].beams += beams
        results[pi].best = best_of_n([b.score for b in results[pi].beams])
    return results


# --- rows, points and the table of an eval ---------------------------------------------------------


def score_rows(rows: list[dict[str, Any]], problems: list[Problem], scorer: Any, ns: list[int],
               timeout: float = 5.0, workers: int = 2) -> list[dict[str, Any]]:
    """Eval rows (eval/run.py, every problem with its samples) with each sample's score, each
    sample's answer group and, per N, what every method selects among the first N samples."""
    by_id = {p.id: p for p in problems}
    probs = [by_id[r["id"]] for r in rows]
    flat = [(p, s) for p, r in zip(probs, rows) for s in r["samples"]]
    scores = scorer.score([prompt_text(p.prompt, "all") for p, _ in flat], [s["text"] for _, s in flat])
    groups = answer_groups(probs, [[s["extracted"] for s in r["samples"]] for r in rows], timeout, workers)
    out, k = [], 0
    for r, g in zip(rows, groups):
        samples = []
        for s, grp in zip(r["samples"], g):
            samples.append({**s, "score": float(scores[k]), "group": grp})
            k += 1
        out.append({**r, "samples": samples,
                    "selection": {str(n): selection_row(samples, g, n) for n in ns if n <= len(samples)}})
    return out


def beam_rows(problems: list[Problem], results: list[BeamResult], verdicts: list[list[Any]], width: int,
              expand: int) -> list[dict[str, Any]]:
    """One row per problem: its finished beams (text, score, verdict, tokens, steps), the chosen one
    and the search's compute."""
    rows = []
    for p, res, vs in zip(problems, results, verdicts):
        beams = [{"text": b.text, "score": b.score, "steps": b.steps, "length": len(b.ids), "finish": b.finish,
                  "extracted": v.extracted, "status": v.status, "correct": v.correct} for b, v in zip(res.beams, vs)]
        rows.append({"id": p.id, "prompt": p.prompt, "answer": p.answer, "width": width, "expand": expand,
                     "best": res.best, "correct": res.best is not None and bool(beams[res.best]["correct"]),
                     "tokens": res.tokens, "expansions": res.expansions, "scored": res.scored, "rounds": res.rounds,
                     "beams": beams})
    return rows


def run_beams(engine: Engine, scorer: Any, problems: list[Problem], params: SamplingParams, n: int, settings: Any,
              seed: int | None = None, timeout: float = 5.0, workers: int = 2) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Beam search at budget n with the eval.search settings (`settings`: W, E from beam_sizes, the
    delimiter, step and round budgets), its finished beams verified: the rows and the point."""
    w, e = beam_sizes(n, settings.beam_width, settings.beam_expand)
    results = beam_search(engine, scorer, problems, params, w, e, settings.delimiter, settings.think_end,
                          settings.step_tokens, settings.max_steps, seed=seed)
    flat = [(p, b) for p, r in zip(problems, results) for b in r.beams]
    vs = iter(verify_batch([p for p, _ in flat], [b.text for _, b in flat], timeout=timeout, workers=workers))
    rows = beam_rows(problems, results, [[next(vs) for _ in r.beams] for r in results], w, e)
    return rows, beam_point(rows, n)


def beam_point(rows: list[dict[str, Any]], n: int) -> dict[str, Any]:
    k = max(len(rows), 1)
    return {"n": n, "width": rows[0]["width"] if rows else 0, "expand": rows[0]["expand"] if rows else 0,
            "beam": sum(r["correct"] for r in rows) / k, "beam_tokens_per_problem": sum(r["tokens"] for r in rows) / k,
            "beam_expansions_per_problem": sum(r["expansions"] for r in rows) / k,
            "beam_rounds": sum(r["rounds"] for r in rows) / k}


def search_table(points: list[dict[str, Any]]) -> str:
    """Markdown: one row per N; accuracies in percent, compute in generated tokens per problem."""
    beam = any("beam" in p for p in points)
    lines = ["| N | tokens / problem | majority | best-of-N (PRM) | PRM-weighted vote | any of N correct |"
             + (" beam W x E | beam tokens / problem | beam (PRM) |" if beam else ""),
             "|---:|---:|---:|---:|---:|---:|" + ("---|---:|---:|" if beam else "")]
    for p in points:
        row = (f"| {p['n']} | {p['tokens_per_problem']:.1f} | {100 * p['majority']:.1f} | {100 * p['best_of_n']:.1f} | "
               f"{100 * p['weighted_vote']:.1f} | {100 * p['any_correct']:.1f} |")
        if beam:
            row += (f" {p['width']} x {p['expand']} | {p['beam_tokens_per_problem']:.1f} | {100 * p['beam']:.1f} |"
                    if "beam" in p else " - | - | - |")
        lines.append(row)
    return "\n".join(lines)
