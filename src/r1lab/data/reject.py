"""Rejection sampling: sample k responses per problem, verify them, keep the verified ones.

This is how DeepSeek-R1 built its 600k reasoning SFT set and how Light-R1 and Skywork-OR1 measured
difficulty: the pass rate (correct / k) is recorded on every row so that `filter` can use it later.
Which verified responses are kept is a policy, and a policy is a pure function of the completions
and their verdicts (`select`), so it is tested without a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Iterable, Iterator, Sequence

from r1lab.config import RolloutConfig
from r1lab.data.verify_traces import batched
from r1lab.domains import Domain, check_fields, setting
from r1lab.errors import ConfigError
from r1lab.records import Completion, Problem, Verdict

POLICIES = ("all-correct", "best-of", "shortest-correct")


@dataclass
class SampleSettings:
    model: str = setting("", path="model", choices="r1lab.hub:REGISTRY")  # local Hugging Face model directory (or prepared name) that samples
    k: int = setting(8, ge=1)  # samples per problem
    temperature: float = setting(1.0, ge=0)
    top_p: float = setting(1.0, gt=0, le=1)
    max_new_tokens: int = setting(512, ge=1)
    seed: int = setting(0, ge=0)
    chunk: int = setting(16, ge=1)  # problems per generation call (rows stream through in chunks)
    batch_size: int = setting(64, ge=1)  # sequences decoded together
    timeout: float = setting(5.0, gt=0)  # verifier seconds per response
    workers: int = setting(2, ge=0)  # verifier processes (0 = in this process)
    engine: str = setting("hf", choices="r1lab.rollout:ENGINES")  # rollout engine that samples: hf | fast (r1lab's CPU decode loop) | auto | vllm
    # the engine's other rollout settings (dtype, kv_cache_gb, vLLM's: rollout.* names); {} = their defaults
    rollout: dict[str, Any] = setting({}, keys=Domain(choices=tuple(f.name for f in fields(RolloutConfig))))


@dataclass
class RejectSettings(SampleSettings):
    policy: str = setting("all-correct", choices=POLICIES)  # all-correct | best-of (most confident correct) | shortest-correct
    field: str = setting("responses", nonempty=True)  # metadata key that receives the kept responses (a list of texts)
    keep_unsolved: bool = False  # keep problems with no kept response (their pass rate is still recorded)


def select(policy: str, completions: Sequence[Completion], verdicts: Sequence[Verdict]) -> list[int]:
    """Indices of the completions to keep. Only verified, untruncated responses are candidates: a
    response cut off at max_new_tokens is a bad SFT target even when its answer scored.
    best-of: the candidate with the highest mean token log-prob; shortest-correct: fewest tokens."""
    good = [i for i, (c, v) in enumerate(zip(completions, verdicts)) if v.correct and not c.truncated]
    if not good or policy == "all-correct":
        return good
    if policy == "shortest-correct":
        return [min(good, key=lambda i: (len(completions[i].response_ids), i))]
    if policy == "best-of":
        def confidence(i: int) -> float:
            lp = completions[i].logprobs
            return sum(lp) / len(lp) if lp else float("-inf")

        return [max(good, key=lambda i: (confidence(i), -i))]
    raise ConfigError(f"unknown reject-sample policy {policy!r} (known: {', '.join(POLICIES)})")


class Sampler:
    """k samples per problem from a model, with verdicts. `engine` may be injected (tests)."""

    def __init__(self, s: SampleSettings, engine: Any = None) -> None:
        if engine is None:
            if not s.model:
                raise ConfigError("sampling needs a model: model: PATH (a local Hugging Face directory)")
            from r1lab.models import load_model
            from r1lab.rollout import build_engine

            model, tok = load_model(s.model)
            engine = build_engine(model, tok, _rollout_config(s), batch_size=s.batch_size)
        from r1lab.rollout import SamplingParams

        self.s, self.engine, self.calls = s, engine, 0
        self.params = SamplingParams(temperature=s.temperature, top_p=s.top_p, max_new_tokens=s.max_new_tokens)

    def sample(self, problems: list[Problem]) -> list[tuple[list[Completion], list[Verdict]]]:
        """Per problem: its k completions and their verdicts."""
        from r1lab.verify import verify_batch

        k = self.s.k
        comps = self.engine.generate(problems, self.params, n=k, seed=self.s.seed + self.calls)
        self.calls += 1
        verdicts = verify_batch([p for p in problems for _ in range(k)], [c.text for c in comps],
                                timeout=self.s.timeout, workers=self.s.workers)
        return [(comps[i * k : (i + 1) * k], verdicts[i * k : (i + 1) * k]) for i in range(len(problems))]


def _rollout_config(s: SampleSettings) -> RolloutConfig:
    try:
        return replace(RolloutConfig(), engine=s.engine, **s.rollout)
    except TypeError:
        known = [f.name for f in fields(RolloutConfig) if f.name not in ("engine", "batch_size")]
        raise ConfigError(f"rollout: {sorted(s.rollout)} holds an unknown engine setting (known: {', '.join(known)})") from None


def record_pass_rate(p: Problem, verdicts: Sequence[Verdict], model: str) -> float:
    n_correct = sum(v.correct for v in verdicts)
    rate = n_correct / len(verdicts)
    p.metadata.update(pass_rate=rate, n_correct=n_correct, n_samples=len(verdicts), pass_rate_model=model)
    return rate


def reject_sample(
    rows: Iterable[Problem],
    s: RejectSettings,
    drop: Callable[[str, str, str], None],
    engine: Any = None,
    on_rate: Callable[[float], None] = lambda rate: None,
) -> Iterator[Problem]:
    """Rows with their kept responses in metadata[s.field] and their pass rate recorded (also
    passed to `on_rate`, for every row, kept or not)."""
    check_fields(s, "reject-sample")
    sampler = Sampler(s, engine)
    for chunk in batched(rows, s.chunk):
        for p, (comps, verdicts) in zip(chunk, sampler.sample(chunk)):
            rate = record_pass_rate(p, verdicts, s.model)
            on_rate(rate)
            keep = select(s.policy, comps, verdicts)
            p.metadata[s.field] = [comps[i].text for i in keep]
            if keep or s.keep_unsolved:
                yield p
            else:
                drop(p.id, "no_verified_sample", f"pass rate {rate:.3f} over {s.k}")
