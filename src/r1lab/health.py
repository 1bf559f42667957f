"""The run-health monitor: catches RL runs that quietly stop learning.

Each check is a small pure function of the metrics history (and the step's decoded samples),
registered by name. `HealthMonitor.observe` runs every check after each step; a check that fires
becomes a `Finding` (what was seen, the likely cause, what to try), printed once, appended to
health.jsonl and listed in the report. NaN or Inf in a step's metrics raises
`TrainingDivergedError`, so the run stops before the broken weights are saved.

Most checks compare the mean of the last `window` steps with the mean of the first
`baseline_steps` steps (the starting policy), never overlapping them, so one noisy step does not
fire a check and the first verdict comes at step baseline_steps + window.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

from r1lab.config import HealthConfig
from r1lab.errors import ConfigError, TrainingDivergedError


@dataclass
class Finding:
    step: int
    check: str
    severity: str  # "warning" | "error"
    message: str  # what was measured
    likely_cause: str
    what_to_try: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        return (f"health [{self.check}] step {self.step}: {self.message}\n"
                f"  likely cause: {self.likely_cause}\n  try: {self.what_to_try}")


class Diagnosis(NamedTuple):
    message: str
    likely_cause: str
    what_to_try: str


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


class History:
    """The metrics of every step so far (plus the monitor's own per-step measurements such as
    `health/garbled`), read as series."""

    def __init__(self, cfg: HealthConfig):
        self.cfg = cfg
        self.rows: list[dict[str, Any]] = []

    def append(self, step: int, metrics: dict[str, Any]) -> None:
        self.rows.append({"step": step, **metrics})

    @property
    def step(self) -> int:
        return self.rows[-1]["step"] if self.rows else 0

    def series(self, key: str) -> list[tuple[int, float]]:
        """(step, value) of every step where `key` is a finite number."""
        out = []
        for r in self.rows:
            v = _number(r.get(key))
            if v is not None and math.isfinite(v):
                out.append((r["step"], v))
        return out

    def values(self, key: str) -> list[float]:
        return [v for _, v in self.series(key)]

    def levels(self, key: str) -> tuple[float, float] | None:
        """(baseline mean, recent mean) of `key`, or None until there are baseline_steps + window
        values; the recent window never includes a baseline step."""
        xs = self.values(key)
        b, w = self.cfg.baseline_steps, self.cfg.window
        if len(xs) < b + w:
            return None
        return _mean(xs[:b]), _mean(xs[-w:])

    def recent(self, key: str) -> float | None:
        """Mean of `key` over the last `window` steps (None until there are that many)."""
        xs = self.values(key)
        return _mean(xs[-self.cfg.window:]) if len(xs) >= self.cfg.window else None

    def keys(self) -> set[str]:
        return {k for r in self.rows for k in r}


Check = Callable[[History, HealthConfig], "Diagnosis | None"]
HEALTH_CHECKS: dict[str, tuple[Check, str]] = {}


def register_check(name: str, severity: str = "warning") -> Callable[[Check], Check]:
    def decorator(fn: Check) -> Check:
        if name in HEALTH_CHECKS:
            raise ValueError(f"health check {name!r} registered twice")
        HEALTH_CHECKS[name] = (fn, severity)
        return fn

    return decorator


# --------------------------------------------------------------------------------------------
# the checks


@register_check("non_finite", severity="error")
def non_finite(h: History, cfg: HealthConfig) -> Diagnosis | None:
    """Any NaN or Inf among the latest step's numbers."""
    if not h.rows:
        return None
    bad = sorted(k for k, v in h.rows[-1].items() if (x := _number(v)) is not None and not math.isfinite(x))
    if not bad:
        return None
    return Diagnosis(
        f"non-finite values in {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}",
        "the update diverged (learning rate too high, an overflow in reduced precision) or a reward term or "
        "loss produced NaN (a log of 0, a division by an empty mask)",
        "lower train.lr, keep train.grad_clip on, try train.bf16=false; check the reward terms on samples.jsonl",
    )


@register_check("entropy_collapse")
def entropy_collapse(h: History, cfg: HealthConfig) -> Diagnosis | None:
    lv = h.levels("policy/entropy")
    if lv is None or lv[0] <= 0 or lv[1] >= cfg.entropy_collapse * lv[0]:
        return None
    return Diagnosis(
        f"token entropy fell from {lv[0]:.3g} to {lv[1]:.3g} nats ({lv[1] / lv[0]:.0%} of its start)",
        "the policy became near-deterministic, so sampling explores nothing new: updates too large, or "
        "symmetric clipping that lets likely tokens grow but rare ones not",
        "lower train.lr; clip-higher (algo.policy_loss_args.clip_eps_high=0.28, DAPO); adaptive entropy control "
        "(algo.entropy_control=true, Skywork-OR1); sample at temperature 1",
    )


@register_check("entropy_explosion")
def entropy_explosion(h: History, cfg: HealthConfig) -> Diagnosis | None:
    lv = h.levels("policy/entropy")
    if lv is None or lv[1] <= cfg.entropy_explosion * lv[0] or lv[1] <= cfg.entropy_explosion_min:
        return None
    return Diagnosis(
        f"token entropy rose from {lv[0]:.3g} to {lv[1]:.3g} nats per token",
        "the policy is drifting toward uniform noise: updates too large, or an entropy bonus that outweighs "
        "the policy-gradient term",
        "lower train.lr; lower algo.entropy_coef (or algo.entropy_max_coef under entropy_control); keep train.grad_clip",
    )


@register_check("length_collapse")
def length_collapse(h: History, cfg: HealthConfig) -> Diagnosis | None:
    lv = h.levels("response/length")
    if lv is None or lv[0] <= 0 or lv[1] >= cfg.length_collapse * lv[0]:
        return None
    return Diagnosis(
        f"mean response length fell from {lv[0]:.1f} to {lv[1]:.1f} tokens",
        "the policy learned to end early: a length penalty that outweighs the accuracy reward, or an update "
        "too large that made end-of-sequence the likeliest token",
        "read samples.jsonl; lower train.lr; lower the weight of length terms (kimi_length, cosine_length)",
    )


@register_check("length_runaway")
def length_runaway(h: History, cfg: HealthConfig) -> Diagnosis | None:
    lv, acc = h.levels("response/length"), h.levels("accuracy")
    if lv is None or acc is None or lv[1] <= cfg.length_runaway * lv[0] or acc[1] - acc[0] >= cfg.accuracy_flat:
        return None
    return Diagnosis(
        f"mean response length grew from {lv[0]:.1f} to {lv[1]:.1f} tokens while training accuracy moved "
        f"{acc[0]:.1%} -> {acc[1]:.1%}",
        "length grows without paying off: loops and repetition, or a loss aggregation that weighs the tokens "
        "of long wrong answers less (seq-mean-token-mean)",
        "algo.loss_agg=token-mean or seq-mean-token-sum-norm (Dr. GRPO); a soft overlong term "
        "(reward.terms.soft_overlong) or a repetition penalty (reward.terms.repetition)",
    )


@register_check("truncation")
def truncation(h: History, cfg: HealthConfig) -> Diagnosis | None:
    t = h.recent("response/truncated")
    if t is None or t <= cfg.truncated_max:
        return None
    limit = h.rows[-1].get("sampling/max_new_tokens")
    return Diagnosis(
        f"{t:.0%} of completions were cut at max_new_tokens{f' = {limit}' if limit is not None else ''} "
        f"(mean of the last {cfg.window} steps)",
        "the context limit is too short for this model's responses: a truncated completion rarely holds a "
        "final answer, so its reward is ~0 and its group carries no signal",
        "raise sampling.max_new_tokens; algo.overlong_filter=true (DAPO: truncated responses carry no loss); "
        "a soft overlong penalty (reward.terms.soft_overlong)",
    )


@register_check("no_signal")
def no_signal(h: History, cfg: HealthConfig) -> Diagnosis | None:
    z = h.recent("batch/zero_variance_groups")
    if z is None or z <= cfg.no_signal_max:
        return None
    acc = h.recent("accuracy")
    why = ("the problems are too hard for this model (almost nothing is solved)" if acc is not None and acc < 0.1
           else "the problems are too easy for this model (almost everything is solved)" if acc is not None and acc > 0.9
           else "the reward does not separate the samples of a group")
    seen = f" (training accuracy {acc:.0%})" if acc is not None else ""
    return Diagnosis(
        f"{z:.0%} of groups have all-equal rewards and carry no gradient{seen}",
        f"{why}; truncation that zeroes every reward has the same effect",
        "change data.difficulty; train.dynamic_sampling=true (DAPO); a larger train.group_size; "
        "check the verifier on samples.jsonl",
    )


@register_check("kl_blowup")
def kl_blowup(h: History, cfg: HealthConfig) -> Diagnosis | None:
    kl = h.recent("policy/kl")
    if kl is None or kl <= cfg.kl_max:
        return None
    return Diagnosis(
        f"KL to the reference is {kl:.3g} nats per token (mean of the last {cfg.window} steps)",
        "the policy moved far from the reference: updates too large for the KL coefficient, or a few tokens "
        "whose probability collapsed dominating the estimate",
        "lower train.lr; raise algo.kl_coef; check rollout/logprob_diff_mean (a stale engine pushes the "
        "trainer on tokens it did not sample)",
    )


@register_check("logprob_gap")
def logprob_gap(h: History, cfg: HealthConfig) -> Diagnosis | None:
    key = "rollout/logprob_diff_mean"
    gap = h.recent(key)
    if gap is None:
        return None
    lv = h.levels(key)
    grew = lv is not None and gap >= cfg.logprob_gap_max / 10 and gap > cfg.logprob_gap_growth * max(lv[0], 1e-12)
    if gap <= cfg.logprob_gap_max and not grew:
        return None
    start = f" (from {lv[0]:.2g} at the start)" if lv is not None else ""
    return Diagnosis(
        f"the engine's and the trainer's log-probs of the sampled tokens differ by {gap:.3g} nats per token{start}",
        "the engine samples from another policy than the trainer scores: weights not synced to the engine, "
        "a precision mismatch (bf16 engine, fp32 trainer), or different temperature / top-p in the recomputation",
        "rollout.dtype=float32 to rule out precision; algo.correction=tis (truncated importance sampling); "
        "check that the engine reloads the weights after every update",
    )


@register_check("garbled_output")
def garbled_output(h: History, cfg: HealthConfig) -> Diagnosis | None:
    g = h.recent("health/garbled")
    if g is None or g <= cfg.garbled_max:
        return None
    example = next((r.get("health/garbled_example") for r in reversed(h.rows) if r.get("health/garbled_example")), "")
    return Diagnosis(
        f"{g:.0%} of the decoded samples are garbled (repeated {cfg.garbled_ngram}-grams or non-printable text)"
        + (f", e.g. {example!r}" if example else ""),
        "the policy degenerated: updates too large, or a tokenizer or chat template that does not match the model",
        "read samples.jsonl; lower train.lr; a repetition penalty (reward.terms.repetition); check the tokenizer",
    )


@register_check("reward_hacking")
def reward_hacking(h: History, cfg: HealthConfig) -> Diagnosis | None:
    evals = h.series("eval/avg")
    if len(evals) < 2:
        return None
    best_step, best = max(evals[:-1], key=lambda e: e[1])
    last_step, last = evals[-1]
    if best - last < cfg.eval_drop:
        return None
    reward = h.series("reward/total")

    def around(step: int) -> float | None:
        xs = [v for s, v in reward if step - cfg.window < s <= step]
        return _mean(xs) if xs else None

    r_then, r_now = around(best_step), around(last_step)
    if r_then is None or r_now is None or r_now - r_then < cfg.reward_rise:
        return None
    return Diagnosis(
        f"training reward rose {r_then:.3f} -> {r_now:.3f} while held-out accuracy fell {best:.1%} "
        f"(step {best_step}) -> {last:.1%} (step {last_step})",
        "the policy earns reward without solving more problems: it exploits a reward term or a verifier that "
        "scores a wrong answer as right, or overfits the training problems",
        "read the high-reward samples of samples.jsonl and run the verifier on them; lower the shaping terms' "
        "weights; compare training accuracy with held-out accuracy",
    )


@register_check("reward_outpaces_accuracy")
def reward_outpaces_accuracy(h: History, cfg: HealthConfig) -> Diagnosis | None:
    """Training reward up while the verifier's training accuracy stalls or falls (both per step,
    both graded on the same samples: no held-out evaluation needed). Not before hacking_min_steps:
    a run that learns its format first (R1-Zero) raises its reward before its accuracy."""
    rew, acc = h.levels("reward/total"), h.levels("accuracy")
    if (rew is None or acc is None or len(h.rows) < cfg.hacking_min_steps or rew[1] - rew[0] < cfg.reward_rise
            or acc[1] - acc[0] >= cfg.accuracy_flat):
        return None
    return Diagnosis(
        f"training reward rose {rew[0]:.3f} -> {rew[1]:.3f} while the verifier's training accuracy moved "
        f"{acc[0]:.1%} -> {acc[1]:.1%}",
        "the reward pays something other than right answers (a lenient checker, a format or length term) and "
        "the policy learned that instead",
        "compare each reward/<term> with accuracy; read the rewarded wrong samples (r1lab verify audit "
        "samples.jsonl --problems FILE); lower or drop the term that rises",
    )


@register_check("rewarded_but_wrong")
def rewarded_but_wrong_check(h: History, cfg: HealthConfig) -> Diagnosis | None:
    """More than `rewarded_wrong_max` of the samples the reward paid as well as a right answer are
    wrong by the verifier (hack/rewarded_but_wrong, mean of the last window); names the term that paid them."""
    share = h.recent("hack/rewarded_but_wrong")
    if share is None or share <= cfg.rewarded_wrong_max:
        return None
    # logged only at steps with rewarded wrong samples: the mean of its last `window` values
    paid = {k.removeprefix("hack/paid_wrong/"): _mean(h.values(k)[-cfg.window:])
            for k in h.keys() if k.startswith("hack/paid_wrong/") and h.values(k)}
    term = max(paid, key=paid.get) if paid else None
    by = f"; paid mostly by reward term {term} ({paid[term]:.2f} per sample)" if term else ""
    return Diagnosis(
        f"{share:.0%} of the samples the reward paid at least as much as a right answer are wrong by the "
        f"verifier (mean of the last {cfg.window} steps){by}",
        f"the reward{f' term {term}' if term else ''} pays answers the verifier rejects: a lenient checker, or a "
        "format or length term that can be met without solving the problem",
        f"drop or down-weight reward.terms.{term or '<term>'}; score correctness with the task's verifier "
        "(reward.terms.accuracy); r1lab verify audit samples.jsonl --problems FILE lists the rewarded wrong samples",
    )


@register_check("format_saturated")
def format_saturated(h: History, cfg: HealthConfig) -> Diagnosis | None:
    acc = h.levels("accuracy")
    if acc is None or len(h.rows) < cfg.hacking_min_steps or acc[1] - acc[0] >= cfg.accuracy_flat:
        return None
    for key in sorted(k for k in h.keys() if k.startswith("reward/format")):
        lv = h.levels(key)
        if lv is not None and lv[0] < cfg.format_saturated <= lv[1]:
            return Diagnosis(
                f"{key} rose {lv[0]:.2f} -> {lv[1]:.2f} (saturated) while training accuracy stayed flat "
                f"({acc[0]:.1%} -> {acc[1]:.1%})",
                "the model learned the easy part of the reward (the output format), not the task",
                f"lower the weight of reward.terms.{key.split('/', 1)[1]} (or drop it once learned); check that "
                "the problems are solvable at all (batch/zero_variance_groups, training accuracy)",
            )
    return None


# --------------------------------------------------------------------------------------------
# garbled text

# words, single digits (numbers read digit by digit, as the tiny tokenizer splits them, so that a
# run of one repeated digit is repetitive) and single symbols
_TOKENS = re.compile(r"\d|[^\W\d]+|[^\w\s]", re.UNICODE)


def repeated_ngram_fraction(text: str, n: int) -> float:
    """Fraction of the text's n-grams (over word, single-digit and single-symbol tokens) that already
    occurred earlier in it; 0 for texts with fewer than 2n tokens (too short to call repetitive)."""
    toks = _TOKENS.findall(text)
    if len(toks) < 2 * n:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    repeats = 0
    for i in range(len(toks) - n + 1):
        g = tuple(toks[i : i + n])
        repeats += g in seen
        seen.add(g)
    return repeats / (len(toks) - n + 1)


def nonprintable_fraction(text: str) -> float:
    """Fraction of characters that are control, unassigned, private-use or surrogate code points,
    or the replacement character (undecodable bytes); newline, tab and carriage return count as printable."""
    if not text:
        return 0.0
    unprintable = ("Cc", "Cn", "Co", "Cs")
    bad = sum(1 for ch in text if ch == "\ufffd" or (ch not in "\n\t\r" and unicodedata.category(ch) in unprintable))
    return bad / len(text)


def is_garbled(text: str, cfg: HealthConfig) -> bool:
    return (nonprintable_fraction(text) > cfg.garbled_nonprint
            or repeated_ngram_fraction(text, cfg.garbled_ngram) > cfg.garbled_repeat)


# --------------------------------------------------------------------------------------------
# the monitor


class HealthMonitor:
    """Runs every registered check after each step. A check that fires is reported once (printed,
    appended to `path`) and not evaluated again; the non-finite check raises every time."""

    def __init__(self, cfg: HealthConfig, path: str | Path | None = None, append: bool = False,
                 log: Callable[[str], None] | None = None):
        if cfg.baseline_steps < 1 or cfg.window < 1:
            raise ConfigError(f"health.baseline_steps and health.window must be >= 1, "
                              f"got {cfg.baseline_steps} and {cfg.window}")
        self.cfg = cfg
        self.path = Path(path) if path is not None else None
        self.history = History(cfg)
        self.findings: list[Finding] = []
        self._log = log
        if self.path is not None and cfg.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if append and self.path.exists():  # a resumed run: what was reported stays reported
                self.findings = read_findings(self.path)
            else:
                self.path.write_text("", encoding="utf-8")

    @property
    def reported(self) -> set[str]:
        return {f.check for f in self.findings}

    def log(self, text: str) -> None:
        if self._log is not None:
            self._log(text)
        else:
            from tqdm.auto import tqdm

            tqdm.write(text)

    def prime(self, rows: list[dict[str, Any]]) -> None:
        """Feed earlier steps' metrics (a resumed run's metrics.jsonl) without checking them."""
        for r in rows:
            self.history.append(int(r["step"]), {k: v for k, v in r.items() if k != "step"})

    def state_dict(self) -> dict[str, Any]:
        """What the checks read that metrics.jsonl does not hold: each step's garbled-sample fraction
        and example, measured on all of its samples (a resumable checkpoint keeps it)."""
        return {"garbled": [(r["step"], r["health/garbled"], r.get("health/garbled_example", ""))
                            for r in self.history.rows if "health/garbled" in r]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put the saved per-step values back into the primed steps' rows."""
        saved = {step: (g, example) for step, g, example in state["garbled"]}
        for r in self.history.rows:
            if r["step"] in saved:
                r["health/garbled"], r["health/garbled_example"] = saved[r["step"]]

    def observe(self, step: int, metrics: dict[str, Any], samples: list[str] | None = None) -> list[Finding]:
        """Check the run after `step`; returns the new findings. `samples` are the step's decoded
        responses, read by the garbled-output check. Raises TrainingDivergedError on NaN or Inf."""
        if not self.cfg.enabled:
            return []
        row = dict(metrics)
        if samples:
            flags = [is_garbled(t, self.cfg) for t in samples]
            row["health/garbled"] = sum(flags) / len(flags)
            row["health/garbled_example"] = next((t[:80] for t, f in zip(samples, flags) if f), "")
        self.history.append(step, row)
        new = []
        for name, (fn, severity) in HEALTH_CHECKS.items():
            if name in self.reported and severity != "error":
                continue
            d = fn(self.history, self.cfg)
            if d is None:
                continue
            f = Finding(step, name, severity, *d)
            self.findings.append(f)
            new.append(f)
            self.log(f.format())
            self._write(f)
            if severity == "error":
                raise TrainingDivergedError(f"step {step}: {d.message}; stopped before saving a checkpoint "
                                            f"(likely cause: {d.likely_cause}; try: {d.what_to_try})")
        return new

    def _write(self, f: Finding) -> None:
        if self.path is None:
            return
        # one write of one whole line, flushed: a crash never leaves half a finding
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(f.to_dict()) + "\n")
            fh.flush()


def read_findings(path: str | Path) -> list[Finding]:
    path = Path(path)
    if not path.exists():
        return []
    return [Finding(**json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def health_markdown(findings: list[Finding] | None, steps: int | None = None) -> str:
    """The report's run-health section; `findings=None` means the monitor was off."""
    if findings is None:
        return "The run-health monitor was off (health.enabled=false)."
    checks = ", ".join(HEALTH_CHECKS)
    if not findings:
        over = f" over {steps} steps" if steps is not None else ""
        return f"No findings{over} (checks: {checks})."
    lines = [f"{len(findings)} finding(s), also in health.jsonl (checks: {checks}).", ""]
    for f in findings:
        lines += [f"- **{f.check}** ({f.severity}, step {f.step}): {f.message}",
                  f"  - likely cause: {f.likely_cause}", f"  - try: {f.what_to_try}"]
    return "\n".join(lines)
