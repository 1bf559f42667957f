"""Score a model on held-out problems: n samples each, verified, summarised, saved per problem.

With `episodes` (an EpisodeSpec) every sample is an episode of an environment (r1lab.envs: tools,
search, ...) run token-exact by rollout/episodes.py; the verifier scores the episode's answer (its
last model turn) unless the environment judges the whole episode itself (`env.verdict`, as the
verifiers adapter does), and each sample row carries its turns, tool calls, tool errors, the precise
finish reason and the whole transcript.

Problems are generated and verified in chunks; each finished chunk's rows are appended to the
per-problem JSONL and flushed, so an interrupted eval keeps what it scored. With `resume=True` an
eval into an existing file continues where it stopped: problems already in the file are not
generated or scored again, and the file's settings (model, benchmark, n, temperature, ...) must be
those of this run, or it is refused. Chunk boundaries and seeds depend only on a problem's position
in the full list, so a resumed eval produces what an uninterrupted one would have.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean
from typing import Any, Callable

from tqdm.auto import tqdm

from r1lab.errors import DataError, R1labError
from r1lab.eval.metrics import avg_at_k, majority_at_k, pass_at_k
from r1lab.eval.overthink import overthinking_metrics
from r1lab.languages import mixing_metrics
from r1lab.records import Problem
from r1lab.rollout.base import Engine, SamplingParams
from r1lab.rollout.episodes import Episode, EpisodeLimits, run_episodes
from r1lab.verify import verify_batch


class ResumeError(R1labError):
    """An existing per-problem file was written with other settings than this eval's."""


@dataclass(frozen=True)
class EpisodeSpec:
    """Evaluate every sample as an episode of environment `env` built with `settings`, within `limits`."""

    env: str
    settings: dict[str, Any] = field(default_factory=dict)
    limits: EpisodeLimits = EpisodeLimits()

    def saved(self) -> dict[str, Any]:
        """What the per-problem file records, so a resume with another environment is refused."""
        return {"env": self.env, "env_settings": self.settings, "max_turns": self.limits.max_turns,
                "max_tokens": self.limits.max_tokens}


@dataclass
class EvalResult:
    summary: dict[str, float]
    rows: list[dict[str, Any]] = field(default_factory=list)


# finish reasons of a sample cut by a limit rather than ended by the model (envs.FINISH_REASONS)
TRUNCATED = ("length", "max_tokens", "max_turns", "max_tool_calls", "tool_timeout")


def _mean_or_nan(xs: list[float]) -> float:
    return mean(xs) if xs else float("nan")


def summarise(rows: list[dict[str, Any]], n: int, ks: list[int]) -> dict[str, float]:
    """accuracy (avg@n: the mean over problems of the fraction of correct samples), pass@k for
    each k <= n (unbiased), maj@n, mean length of all / correct / wrong samples (in tokens; samples
    whose length the engine could not report are left out), truncation and unparsable rates."""
    samples = [s for r in rows for s in r["samples"]]
    lengths = [s for s in samples if s.get("length") is not None]
    out: dict[str, float] = {
        "problems": len(rows),
        "samples": len(samples),
        f"avg@{n}": mean(r["avg"] for r in rows) if rows else 0.0,
        f"maj@{n}": mean(r["maj"] for r in rows) if rows else 0.0,
    }
    for k in ks:
        if k <= n:
            out[f"pass@{k}"] = mean(pass_at_k(n, r["correct"], k) for r in rows) if rows else 0.0
    out["len_correct"] = _mean_or_nan([s["length"] for s in lengths if s["correct"]])
    out["len_wrong"] = _mean_or_nan([s["length"] for s in lengths if not s["correct"]])
    out["len_mean"] = _mean_or_nan([s["length"] for s in lengths])
    out["truncated"] = mean(s["finish"] in TRUNCATED for s in samples) if samples else 0.0
    out["unparsable"] = mean(s["status"] == "unparsable" for s in samples) if samples else 0.0
    episodes = [s for s in samples if "turns" in s]
    if episodes:  # per episode: turns, tool calls, tool errors, seconds in the environment; finish reasons
        for key in ("turns", "tool_calls", "tool_errors", "env_seconds"):
            out[key] = mean(s[key] for s in episodes)
        for reason in sorted({s["finish"] for s in episodes}):
            out[f"finish/{reason}"] = mean(s["finish"] == reason for s in episodes)
    out.update(language_summary(rows))
    out.update(overthinking_metrics(rows))
    return out


def language_summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    """For rows that carry a language: the mixing metrics over all their samples, and per language
    its accuracy (avg@n) and mean consistency (lang/<code>/accuracy, lang/<code>/consistency)."""
    rows = [r for r in rows if isinstance(r.get("language"), str)]
    if not rows:
        return {}
    out = mixing_metrics([s["text"] for r in rows for s in r["samples"]],
                         [r["language"] for r in rows for s in r["samples"]])
    for lang in sorted({r["language"] for r in rows}):
        mine = [r for r in rows if r["language"] == lang]
        out[f"lang/{lang}/accuracy"] = mean(r["avg"] for r in mine)
        out[f"lang/{lang}/consistency"] = mixing_metrics([s["text"] for r in mine for s in r["samples"]],
                                                         [lang] * sum(len(r["samples"]) for r in mine))["lang/consistency"]
    return out


def settings_path(out_path: str | Path) -> Path:
    """`eval/gsm8k.jsonl` -> `eval/gsm8k.settings.json`: what the per-problem file was made with."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.name.removesuffix(".jsonl") + ".settings.json")


def _load_done(out_path: Path, settings: dict[str, Any], problems: list[Problem]) -> list[dict[str, Any]]:
    """Rows already scored into `out_path` by an eval with the same settings. A torn last line
    (the process died mid-write) is cut off; rows of problems not asked for now are ignored."""
    sp = settings_path(out_path)
    try:
        saved = json.loads(sp.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResumeError(f"{out_path} exists but {sp.name} does not, so it cannot be resumed; "
                          "remove it or evaluate into another directory") from None
    except ValueError:
        raise ResumeError(f"{sp} is not valid JSON; remove {out_path.parent} or evaluate into another directory") from None
    diff = [f"{k}: saved {saved.get(k)!r}, now {v!r}" for k, v in settings.items() if saved.get(k) != v]
    if diff:
        raise ResumeError(f"{out_path} was evaluated with other settings ({'; '.join(diff)}); "
                          "evaluate into another directory to change them")
    wanted = {p.id for p in problems}
    rows: dict[str, dict[str, Any]] = {}
    good_bytes = 0
    with out_path.open("rb") as f:
        for line in f:
            try:
                row = json.loads(line)
                if not line.endswith(b"\n") or not isinstance(row, dict) or "id" not in row:
                    raise ValueError
            except ValueError:
                break  # a torn write: everything from here on is dropped and scored again
            good_bytes += len(line)
            if row["id"] in wanted:
                rows.setdefault(row["id"], row)
    if good_bytes < out_path.stat().st_size:
        with out_path.open("r+b") as f:
            f.truncate(good_bytes)
    return list(rows.values())


def _start_file(out_path: Path, settings: dict[str, Any]) -> None:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    sp = settings_path(out_path)
    tmp = sp.with_name(f".{sp.name}.tmp")
    tmp.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    out_path.write_text("", encoding="utf-8")
    os.replace(tmp, sp)


def transcript(ep: Episode) -> list[dict[str, str]]:
    """An episode's text in order, each piece marked by who wrote it: the model or the environment."""
    out, texts = [], iter(ep.texts)
    for turn in ep.turns:
        out.append({"by": "model", "text": next(texts)})
        if turn.env_tokens:
            out.append({"by": "env", "text": next(texts)})
    return out


def episode_fields(ep: Episode) -> dict[str, Any]:
    """What a sample row adds for an episode; `length` counts the model's tokens only."""
    return {"length": sum(t.model_tokens for t in ep.turns), "env_tokens": sum(t.env_tokens for t in ep.turns),
            "finish": ep.finish_reason, "turns": len(ep.turns), "tool_calls": sum(t.tool_calls for t in ep.turns),
            "tool_errors": sum(t.tool_errors for t in ep.turns),
            "env_seconds": round(sum(t.env_seconds for t in ep.turns), 4), "answer_text": ep.answer,
            "transcript": transcript(ep)}


def _rows_for(problems: list[Problem], n: int, completions, verdicts, extras=None) -> list[dict[str, Any]]:
    rows = []
    for i, p in enumerate(problems):
        cs, vs = completions[i * n : (i + 1) * n], verdicts[i * n : (i + 1) * n]
        xs = extras[i * n : (i + 1) * n] if extras else [{}] * len(cs)
        ok = [v.correct for v in vs]
        rows.append({
            "id": p.id,
            "prompt": p.prompt,
            "answer": p.answer,
            "n": n,
            "correct": sum(ok),
            "avg": avg_at_k(ok),
            "maj": majority_at_k([v.extracted for v in vs], ok),
            # what the language and overthinking measures group by, where the problem says
            **{k: p.metadata[k] for k in ("language", "difficulty") if (p.metadata or {}).get(k) is not None},
            "samples": [
                {"text": c.text, "extracted": v.extracted, "status": v.status, "reason": v.reason,
                 "correct": v.correct, "length": c.num_tokens, "finish": c.finish_reason,
                 **({"think_tokens": c.think_tokens} if c.think_tokens is not None else {}), **x}
                for c, v, x in zip(cs, vs, xs)
            ],
        })
    return rows


def evaluate(
    engine: Engine,
    problems: list[Problem],
    params: SamplingParams,
    n: int = 8,
    ks: list[int] | None = None,
    seed: int = 0,
    verify_timeout: float = 5.0,
    verify_workers: int = 2,
    out_path: str | Path | None = None,
    desc: str = "eval",
    show_progress: bool = True,
    resume: bool = False,
    settings: dict[str, Any] | None = None,
    chunk_size: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    episodes: EpisodeSpec | None = None,
) -> EvalResult:
    """Sample `n` completions per problem from `engine`, verify them, summarise.

    out_path: per-problem JSONL, appended chunk by chunk. resume: continue an existing out_path
    whose settings (`settings` plus n, temperature, top_p, max_new_tokens, seed) match, else it is
    started afresh. chunk_size: problems per generate call (default: what fills one engine batch).
    on_progress(done, total): called after each chunk is written. episodes: run each sample as an
    episode of this environment (an engine that continues token ids: fast or hf).
    """
    ks = ks or [1, n]
    t0 = time.time()
    settings = {**(settings or {}), "n": n, "temperature": params.temperature, "top_p": params.top_p,
                "max_new_tokens": params.max_new_tokens, "seed": seed, **(episodes.saved() if episodes else {})}
    out = Path(out_path) if out_path is not None else None
    done: dict[str, dict[str, Any]] = {}
    if out is not None:
        if len({p.id for p in problems}) != len(problems):
            raise DataError(f"{out}: problem ids are not unique, so results cannot be saved per problem")
        if resume and out.exists():
            done = {r["id"]: r for r in _load_done(out, settings, problems)}
        else:
            _start_file(out, settings)
    if chunk_size is None:
        chunk_size = max(1, engine.batch_size // n)
    total = len(problems)
    bar = tqdm(total=total * n, initial=len(done) * n, desc=desc, unit="sample", disable=not show_progress,
               dynamic_ncols=True)
    gen_tokens, new = 0, 0
    try:
        for start in range(0, total, chunk_size):
            todo = [p for p in problems[start : start + chunk_size] if p.id not in done]
            if not todo:
                continue
            # the seed depends on the chunk's position only: resuming reproduces the samples
            if episodes is None:
                completions = engine.generate(todo, params, n=n, seed=seed + start * n, on_batch=bar.update)
                answers, extras = [c.text for c in completions], None
            else:  # the first turn draws what generate would; the verifier reads each episode's answer
                eps = run_episodes(engine, todo, params, n=n, seed=seed + start * n, env=episodes.env,
                                   env_settings=episodes.settings, limits=episodes.limits)
                bar.update(len(eps))
                completions, answers = [ep.completion for ep in eps], [ep.answer for ep in eps]
                extras = [episode_fields(ep) for ep in eps]
            verdicts = verify_batch([p for p in todo for _ in range(n)], answers,
                                    timeout=verify_timeout, workers=verify_workers)
            if episodes is not None:  # an environment that judges whole episodes (its rewards saw the tool turns)
                verdicts = [getattr(ep.env, "verdict", None) or v for ep, v in zip(eps, verdicts)]
            rows = _rows_for(todo, n, completions, verdicts, extras)
            if out is not None:
                with out.open("a", encoding="utf-8") as f:
                    f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
                    f.flush()
            done.update((r["id"], r) for r in rows)
            gen_tokens += sum(s.get("length") or 0 for r in rows for s in r["samples"])
            new += len(todo)
            if on_progress:
                on_progress(len(done), total)
    finally:
        bar.close()
    rows = [done[p.id] for p in problems]
    summary = summarise(rows, n, ks)
    elapsed = time.time() - t0
    summary["seconds"] = elapsed  # of this invocation; a resumed eval only counts what it generated
    summary["tokens_per_s"] = gen_tokens / max(elapsed, 1e-9)
    summary["resumed_problems"] = total - new
    return EvalResult(summary, rows)
