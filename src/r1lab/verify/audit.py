"""Grader audit: grade a sample of recorded verdicts again with a second grader, and report where they disagree.

    r1lab verify audit runs/x/eval/gsm8k.jsonl                      (strict text-and-number grader)
    r1lab verify audit runs/x/samples.jsonl --problems train.jsonl --judge http://127.0.0.1:8000/v1

Input: the per-problem JSONL of `r1lab eval` (one row per problem, a verdict per sample), the
`samples.jsonl` of an RL run (with `--problems`, the Problem file the run trained on, for the gold
answers), or flat rows with a prompt/problem, an answer, a response/text and a correct/status field.

The sample is stratified by the recorded verdict: up to n/2 items the reward called correct and n/2
it did not (the rest of n goes to the other side when one is short), so both directions get
measured even when one verdict is rare. The second grader's verdicts are taken as the reference:

- among the sampled items the reward called correct, the share the second grader calls wrong
  estimates the reward's false-discovery share; among those it called not correct, the share the
  second grader calls correct estimates its missed share. Each has a 95% Wilson interval;
- weighting the two strata by their sizes in the whole file gives the reward's false-positive rate
  FP / (FP + TN) and false-negative rate FN / (FN + TP). Their intervals combine the two strata's
  Wilson bounds (each rate rises with both shares), so they are conservative.

The second grader is either `strict`, built in and independent of the reward's code: the last
`<answer>` block (or, without one, the last `\\boxed{}`) must equal the gold answer as a number
(integers, decimals and fractions compared exactly) or, when either is not a number, as text after
removing spacing, `$`, `\\text{}` and `\\left`/`\\right`; or an LLM judge through any
OpenAI-compatible endpoint (`r1lab serve` included). A judge that errs or times out abstains: those
items are listed and left out of the rates. The report (audit.md, audit.json) lists every
disagreement to read, both directions, and is written atomically.
"""

from __future__ import annotations

import json
import math
import random
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterable

from r1lab.errors import ConfigError, DataError, R1labError
from r1lab.records import Problem, Verdict, write_text_atomic
from r1lab.reward_hacks import box_spans

Z95 = 1.959963984540054


@dataclass
class Item:
    ref: str  # where the verdict was read: file:line (and #sample for eval rows)
    problem_id: str
    prompt: str | list[dict[str, str]]
    answer: str
    response: str
    reward_correct: bool
    reward_status: str  # the recorded verdict status


# ---------------------------------------------------------------------------------------------
# the strict grader

_SPACING = re.compile(r"\\[,!;: $]|\\(?:left|right|displaystyle)(?![A-Za-z])|\$|\s+")
_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")
_FRAC = re.compile(r"^(-?)\\[dt]?frac\{(-?\d+)\}\{(-?\d+)\}$")
_NUMBER = re.compile(r"^[-+]?(?:\d+(?:,\d{3})*|\d*)(?:\.\d+)?$")


def last_boxed(text: str) -> str | None:
    """The content of the `\\boxed{...}` that closes last, or None."""
    spans = box_spans(text)
    return text[spans[-1][0] : spans[-1][1]] if spans else None


def strict_answer(response: str) -> str | None:
    """The last `<answer>...</answer>` block (its last box if it holds one), else the last box."""
    close = response.rfind("</answer>")
    start = response.rfind("<answer>", 0, close) if close >= 0 else -1
    if start >= 0:
        block = response[start + len("<answer>") : close]
        inner = last_boxed(block)
        return inner if inner is not None else block
    return last_boxed(response)


def strict_text(s: str) -> str:
    s = _TEXT.sub(r"\1", s.strip())
    s = _SPACING.sub("", s).rstrip(".")
    return s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").lower()


def as_number(s: str) -> Fraction | None:
    """An exact number from an integer, decimal (thousands commas allowed), a/b or \\frac{a}{b}; else None."""
    s = strict_text(s)
    m = _FRAC.match(s)
    if m:
        num, den = int(m.group(2)), int(m.group(3))
        return None if den == 0 else Fraction(-num if m.group(1) else num, den)
    if s.count("/") == 1:
        a, b = s.split("/")
        x, y = as_number(a), as_number(b)
        return None if x is None or y is None or y == 0 else x / y
    if s and _NUMBER.match(s) and any(c.isdigit() for c in s):
        return Fraction(s.replace(",", ""))
    return None


def strict_grade(response: str, problem: Problem) -> Verdict:
    """The strict text-and-number grader (module docstring)."""
    if not isinstance(response, str):
        return Verdict("wrong", "no response text")
    got = strict_answer(response)
    if got is None or not got.strip():
        return Verdict("wrong", "no <answer> block and no \\boxed{} answer")
    gold_box = last_boxed(str(problem.answer))
    gold = gold_box if gold_box is not None else str(problem.answer)
    a, b = as_number(got), as_number(gold)
    if a is not None and b is not None:
        ok = a == b
        return Verdict("correct" if ok else "wrong", f"number {a} {'=' if ok else '!='} {b}", extracted=got)
    ok = strict_text(got) == strict_text(gold)
    return Verdict("correct" if ok else "wrong", f"text {strict_text(got)!r} {'=' if ok else '!='} {strict_text(gold)!r}",
                   extracted=got)


# ---------------------------------------------------------------------------------------------
# reading verdicts


def _read_jsonl(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object")
            yield lineno, row


def _first(row: dict[str, Any], names: tuple[str, ...]) -> Any:
    return next((row[n] for n in names if row.get(n) is not None), None)


def _recorded(row: dict[str, Any], where: str) -> tuple[bool, str]:
    """(the reward called it correct, the recorded status) from correct / status / verdict fields."""
    status = row.get("status", row.get("verdict"))
    if isinstance(status, dict):
        status = status.get("status")
    if "correct" in row and isinstance(row["correct"], bool):
        return row["correct"], str(status or ("correct" if row["correct"] else "wrong"))
    if isinstance(status, str) and status:
        return status == "correct", status
    raise DataError(f"{where}: no recorded verdict (a boolean 'correct' or a 'status'/'verdict' field)")


def load_items(path: str | Path, problems: str | Path | None = None) -> list[Item]:
    """Every recorded verdict in `path` (module docstring: eval rows, RL samples or flat rows)."""
    path = Path(path)
    by_id: dict[str, Problem] | None = None
    if problems is not None:
        from r1lab.records import load_problems

        by_id = {p.id: p for p in load_problems(problems)}
    items: list[Item] = []
    for lineno, row in _read_jsonl(path):
        where = f"{path}:{lineno}"
        if isinstance(row.get("samples"), list):  # r1lab eval: one row per problem
            prompt, answer = row.get("prompt"), row.get("answer")
            if prompt is None or answer is None:
                raise DataError(f"{where}: an eval row needs 'prompt' and 'answer'")
            for j, s in enumerate(row["samples"]):
                if not isinstance(s, dict) or not isinstance(s.get("text"), str):
                    raise DataError(f"{where}: samples[{j}] has no 'text'")
                ok, status = _recorded(s, f"{where} samples[{j}]")
                items.append(Item(f"{where}#{j}", str(row.get("id", lineno)), prompt, str(answer), s["text"], ok, status))
            continue
        response = _first(row, ("response", "text", "completion", "output"))
        if not isinstance(response, str):
            raise DataError(f"{where}: no response text (response, text, completion or output)")
        ok, status = _recorded(row, where)
        pid = str(_first(row, ("problem_id", "id")) or lineno)
        prompt, answer = _first(row, ("prompt", "problem", "question")), row.get("answer")
        if answer is None or prompt is None:
            if by_id is None:
                raise DataError(f"{where}: no prompt/answer in the row (RL samples.jsonl): pass --problems FILE, "
                                "the problems the run used")
            if pid not in by_id:
                raise DataError(f"{where}: problem {pid!r} is not in {problems}")
            prompt, answer = by_id[pid].prompt, by_id[pid].answer
        items.append(Item(where, pid, prompt, str(answer), response, ok, status))
    if not items:
        raise DataError(f"{path}: no verdicts in file")
    return items


def stratified_sample(items: list[Item], n: int, seed: int = 0) -> list[Item]:
    """Up to n items, half from each recorded verdict (the remainder to the larger side); n <= 0: all."""
    if n <= 0 or n >= len(items):
        return list(items)
    rng = random.Random(seed)
    pos = [i for i in items if i.reward_correct]
    neg = [i for i in items if not i.reward_correct]
    take_pos = min(len(pos), max(n // 2, n - len(neg)))
    take_neg = min(len(neg), n - take_pos)
    return rng.sample(pos, take_pos) + rng.sample(neg, take_neg)


# ---------------------------------------------------------------------------------------------
# statistics (pure)


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion k/n; (0, 1) when n = 0."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _fp_rate(n_pos: float, n_neg: float, q: float, r: float) -> float:
    """FP / (FP + TN) with FP = n_pos q (reward-correct items that are wrong), TN = n_neg (1 - r)."""
    fp, tn = n_pos * q, n_neg * (1 - r)
    return fp / (fp + tn) if fp + tn > 0 else float("nan")


def reward_error_rates(n_pos: int, n_neg: int, k_pos: int, m_pos: int, k_neg: int, m_neg: int) -> dict[str, dict[str, float]]:
    """The reward's error rates against the second grader, from a sample stratified by the reward's verdict.

    n_pos, n_neg: items the reward called correct / not correct in the whole file; of m_pos sampled
    reward-correct items the second grader called k_pos wrong; of m_neg sampled reward-not-correct
    items it called k_neg correct. q = k_pos/m_pos and r = k_neg/m_neg (with Wilson intervals);
    false-positive rate FP/(FP+TN) = n_pos q / (n_pos q + n_neg (1-r)), false-negative rate
    FN/(FN+TP) = n_neg r / (n_neg r + n_pos (1-q)); each is increasing in q and in r, so the
    bounds put both shares at their lower (upper) Wilson bounds.
    """
    q = k_pos / m_pos if m_pos else float("nan")
    r = k_neg / m_neg if m_neg else float("nan")
    (q_lo, q_hi), (r_lo, r_hi) = wilson(k_pos, m_pos), wilson(k_neg, m_neg)
    return {
        "wrong_among_reward_correct": {"estimate": q, "low": q_lo, "high": q_hi, "k": k_pos, "n": m_pos},
        "correct_among_reward_not_correct": {"estimate": r, "low": r_lo, "high": r_hi, "k": k_neg, "n": m_neg},
        "false_positive_rate": {"estimate": _fp_rate(n_pos, n_neg, q, r) if m_pos and m_neg else float("nan"),
                                "low": _fp_rate(n_pos, n_neg, q_lo, r_lo), "high": _fp_rate(n_pos, n_neg, q_hi, r_hi)},
        "false_negative_rate": {"estimate": _fp_rate(n_neg, n_pos, r, q) if m_pos and m_neg else float("nan"),
                                "low": _fp_rate(n_neg, n_pos, r_lo, q_lo), "high": _fp_rate(n_neg, n_pos, r_hi, q_hi)},
    }


# ---------------------------------------------------------------------------------------------
# reward hacking, step by step (an RL run's samples.jsonl)


def _run_settings(samples_path: Path) -> tuple[dict[str, float] | None, dict[str, Any]]:
    """(reward.terms, health settings) of the run's config.yaml beside samples.jsonl; (None, {}) without one."""
    import yaml

    cfg_path = samples_path.with_name("config.yaml")
    if not cfg_path.is_file():
        return None, {}
    try:
        cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise DataError(f"{cfg_path}: not valid YAML ({getattr(e, 'problem', e)})") from None
    terms = (cfg.get("reward") or {}).get("terms")
    return ({str(k): float(v) for k, v in terms.items()} if isinstance(terms, dict) else None), (cfg.get("health") or {})


def hacking_by_step(path: str | Path, problems: str | Path | None) -> dict[str, Any] | None:
    """Every sample of an RL run's samples.jsonl graded by the strict grader, per step: the mean
    training reward, the strict accuracy and the rewarded-but-wrong share (reward_hacks), and the
    step at which each hacking rule of the health monitor fires on these series (its thresholds
    from the run's config.yaml, else the defaults). None when the file is not an RL samples file
    (rows with a step and per-term rewards)."""
    from r1lab.config import HealthConfig
    from r1lab.records import load_problems
    from r1lab.reward_hacks import first_outpacing, first_sustained, rewarded_but_wrong

    path = Path(path)
    rows = list(_read_jsonl(path))
    if not rows or not all(isinstance(r.get("step"), int) and isinstance(r.get("rewards"), dict) for _, r in rows):
        return None
    if problems is None:
        raise DataError(f"{path}: an RL samples file: pass --problems FILE (the run's data/train.jsonl) for the gold answers")
    by_id = {p.id: p for p in load_problems(problems)}
    weights, health = _run_settings(path)
    defaults = HealthConfig()
    knob = lambda name: health.get(name, getattr(defaults, name))  # noqa: E731
    steps: dict[int, list[tuple[float, bool, dict[str, float]]]] = {}
    for lineno, row in rows:
        pid, where = str(row.get("problem_id")), f"{path}:{lineno}"
        if pid not in by_id:
            raise DataError(f"{where}: problem {pid!r} is not in {problems}")
        if not isinstance(row.get("text"), str) or not isinstance(row.get("reward"), (int, float)):
            raise DataError(f"{where}: an RL sample needs 'text' and a numeric 'reward'")
        terms = {k: float(v) * (weights.get(k, 0.0) if weights is not None else 1.0) for k, v in row["rewards"].items()}
        steps.setdefault(row["step"], []).append((float(row["reward"]), strict_grade(row["text"], by_id[pid]).correct, terms))
    table = []
    for step in sorted(steps):
        samples = steps[step]
        m = rewarded_but_wrong([r for r, _, _ in samples], [ok for _, ok, _ in samples],
                               {k: [t.get(k, 0.0) for _, _, t in samples] for k in samples[0][2]})
        table.append({"step": step, "samples": len(samples), "reward": sum(r for r, _, _ in samples) / len(samples),
                      "strict_accuracy": sum(ok for _, ok, _ in samples) / len(samples),
                      "rewarded_but_wrong": m.share, "paid_by": m.paid_by})
    shares = [(t["step"], t["rewarded_but_wrong"]) for t in table if t["rewarded_but_wrong"] is not None]
    window = int(knob("window"))
    wrong_step = first_sustained(shares, float(knob("rewarded_wrong_max")), window)
    culprit = None
    if wrong_step is not None:  # the term that paid the rewarded wrong samples most, over the firing window
        recent = [t["paid_by"] for t in table if wrong_step - window < t["step"] <= wrong_step and t["paid_by"]]
        totals = {k: sum(p.get(k, 0.0) for p in recent) for k in {k for p in recent for k in p}}
        culprit = max(totals, key=totals.get) if totals else None
    outpacing = first_outpacing([(t["step"], t["reward"]) for t in table], [(t["step"], t["strict_accuracy"]) for t in table],
                                int(knob("baseline_steps")), window, float(knob("reward_rise")), float(knob("accuracy_flat")),
                                int(knob("hacking_min_steps")))
    return {"steps": table, "weights": weights, "rewarded_wrong_max": float(knob("rewarded_wrong_max")), "window": window,
            "fired": {"rewarded_but_wrong": wrong_step, "reward_outpaces_accuracy": outpacing}, "paid_by": culprit}


def hacking_markdown(h: dict[str, Any]) -> str:
    fired, lines = h["fired"], ["## Reward hacking by step (the strict grader on every sample)", ""]
    weights = "the run's reward.terms weights" if h["weights"] is not None else "every term at weight 1 (no config.yaml)"
    if fired["rewarded_but_wrong"] is not None:
        lines.append(f"- **rewarded_but_wrong** fired at step {fired['rewarded_but_wrong']}: over {h['window']} steps more than "
                     f"{h['rewarded_wrong_max']:.0%} of the samples paid at least the mean of the right ones are wrong"
                     + (f", paid mostly by reward term **{h['paid_by']}** ({weights})" if h["paid_by"] else ""))
    if fired["reward_outpaces_accuracy"] is not None:
        lines.append(f"- **reward_outpaces_accuracy** fired at step {fired['reward_outpaces_accuracy']}: the training reward "
                     "rose while the strict accuracy stalled or fell")
    if all(v is None for v in fired.values()):
        lines.append(f"No hacking rule fired over {len(h['steps'])} steps.")
    lines += ["", "| step | samples | mean reward | strict accuracy | rewarded but wrong |", "|---:|---:|---:|---:|---:|"]
    for t in h["steps"]:
        share = "n/a" if t["rewarded_but_wrong"] is None else f"{t['rewarded_but_wrong']:.0%}"
        lines.append(f"| {t['step']} | {t['samples']} | {t['reward']:.3f} | {t['strict_accuracy']:.1%} | {share} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# the audit


@dataclass
class AuditSettings:
    n: int = 200  # verdicts to grade again (stratified by the recorded verdict); 0 = all
    seed: int = 0
    judge: str = ""  # OpenAI-compatible base URL of an LLM judge; "" = the strict grader
    judge_model: str = "default"
    judge_timeout: float = 60.0  # seconds per judgement, retries included
    concurrency: int = 4  # judge requests in flight


def _judge_base(url: str) -> str:
    """The judge's base URL without a trailing /v1 (JudgeVerifier adds /v1/chat/completions)."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def second_grader(s: AuditSettings) -> tuple[str, Callable[[str, Problem], Verdict]]:
    if not s.judge:
        return "strict text-and-number grader", strict_grade
    if not re.match(r"^https?://", s.judge):
        raise ConfigError(f"--judge must be an http(s) URL of an OpenAI-compatible server, got {s.judge!r}")
    from r1lab.verify.judge import JudgeVerifier

    judge = JudgeVerifier(_judge_base(s.judge), s.judge_model, timeout=s.judge_timeout)
    return f"LLM judge {s.judge} (model {s.judge_model})", judge


def check_endpoint(url: str, timeout: float = 10.0) -> None:
    """R1labError unless `GET {base}/v1/models` answers: a dead judge fails in one line, not as
    a report in which every item abstained."""
    import urllib.error
    import urllib.request

    models = _judge_base(url) + "/v1/models"
    try:
        with urllib.request.urlopen(models, timeout=timeout) as resp:
            resp.read()
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise R1labError(f"judge endpoint {url} does not answer ({getattr(e, 'reason', e)}); is the server running?") from None


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n] + " ..."


def _tail(text: str, n: int) -> str:
    return text if len(text) <= n else "... " + text[-n:]


def run_audit(items: list[Item], s: AuditSettings, source: str = "") -> dict[str, Any]:
    """Grade a stratified sample of `items` again; the report as a dict (see write_report)."""
    if s.concurrency < 1:
        raise ConfigError("--concurrency must be >= 1")
    name, grade = second_grader(s)
    sample = stratified_sample(items, s.n, s.seed)
    problems = [Problem(i.problem_id, i.prompt, i.answer) for i in sample]
    with ThreadPoolExecutor(max_workers=s.concurrency if s.judge else 1) as pool:
        verdicts = list(pool.map(grade, [i.response for i in sample], problems))
    table = {side: {"second_correct": 0, "second_wrong": 0, "second_abstained": 0} for side in ("reward_correct", "reward_not_correct")}
    rows, abstained = [], []
    for item, v in zip(sample, verdicts):
        side = "reward_correct" if item.reward_correct else "reward_not_correct"
        second = None if v.status in ("error", "timeout") else v.correct
        table[side]["second_abstained" if second is None else ("second_correct" if second else "second_wrong")] += 1
        record = {"ref": item.ref, "problem_id": item.problem_id, "reward": item.reward_status, "second": v.status,
                  "second_reason": _short(v.reason, 300), "second_extracted": v.extracted, "answer": item.answer,
                  "prompt": _short(item.prompt if isinstance(item.prompt, str) else json.dumps(item.prompt), 400),
                  "response_tail": _tail(item.response, 600)}
        if second is None:
            abstained.append(record)
        elif second != item.reward_correct:
            record["direction"] = "reward correct, second wrong" if item.reward_correct else "reward not correct, second correct"
            rows.append(record)
    n_pos = sum(i.reward_correct for i in items)
    pc, pn = table["reward_correct"], table["reward_not_correct"]
    m_pos, m_neg = pc["second_correct"] + pc["second_wrong"], pn["second_correct"] + pn["second_wrong"]
    graded = m_pos + m_neg
    rows.sort(key=lambda r: (r["direction"], r["ref"]))
    return {
        "source": source, "grader": name, "settings": asdict(s),
        "verdicts": len(items), "reward_correct": n_pos, "reward_not_correct": len(items) - n_pos,
        "sampled": len(sample), "graded": graded, "abstained": len(abstained),
        "table": table,
        "agreement": (pc["second_correct"] + pn["second_wrong"]) / graded if graded else float("nan"),
        "rates": reward_error_rates(n_pos, len(items) - n_pos, pc["second_wrong"], m_pos, pn["second_correct"], m_neg),
        "disagreements": rows, "abstentions": abstained,
    }


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.1f}%"


def report_markdown(r: dict[str, Any]) -> str:
    t, rates = r["table"], r["rates"]
    lines = [
        f"# Grader audit: {r['source']}", "",
        f"Second grader: {r['grader']}. {r['verdicts']} recorded verdicts ({r['reward_correct']} correct, "
        f"{r['reward_not_correct']} not correct); {r['sampled']} sampled, stratified by the recorded verdict "
        f"(seed {r['settings']['seed']}); {r['graded']} graded, {r['abstained']} abstained.", "",
        "| recorded verdict (reward) | second: correct | second: wrong | second: abstained |",
        "|---|---:|---:|---:|",
    ]
    for side, label in (("reward_correct", "correct"), ("reward_not_correct", "not correct")):
        lines.append(f"| {label} | {t[side]['second_correct']} | {t[side]['second_wrong']} | {t[side]['second_abstained']} |")
    lines += ["", f"Agreement on the graded sample: {_pct(r['agreement'])}.", "",
              "| the reward's error, against the second grader | estimate | 95% interval | from |", "|---|---:|---|---|"]
    descr = {
        "wrong_among_reward_correct": "rewarded but wrong (share of reward-correct)",
        "correct_among_reward_not_correct": "not rewarded but correct (share of reward-not-correct)",
        "false_positive_rate": "false-positive rate FP/(FP+TN)",
        "false_negative_rate": "false-negative rate FN/(FN+TP)",
    }
    for key, label in descr.items():
        x = rates[key]
        frm = f"{x['k']} of {x['n']} sampled" if "k" in x else "both strata, weighted by their size"
        lines.append(f"| {label} | {_pct(x['estimate'])} | {_pct(x['low'])} - {_pct(x['high'])} | {frm} |")
    lines += ["", f"## Disagreements to read ({len(r['disagreements'])})", ""]
    if not r["disagreements"]:
        lines.append("None: the two graders agree on every graded item.")
    for d in r["disagreements"]:
        lines += [f"### {d['ref']}: {d['direction']}", "",
                  f"- problem `{d['problem_id']}`, gold answer `{d['answer']}`",
                  f"- reward: {d['reward']}; second grader: {d['second']} ({d['second_reason']})",
                  f"- prompt: {json.dumps(d['prompt'], ensure_ascii=False)}",
                  f"- response (end): {json.dumps(d['response_tail'], ensure_ascii=False)}", ""]
    if r["abstentions"]:
        lines += [f"## Abstained ({len(r['abstentions'])})", ""]
        lines += [f"- {a['ref']}: {a['second']}: {a['second_reason']}" for a in r["abstentions"]]
    text = "\n".join(lines) + "\n"
    return text + "\n" + hacking_markdown(r["hacking"]) if r.get("hacking") else text


def _json_safe(x: Any) -> Any:
    """NaN (a rate with nothing to estimate it from) as null: audit.json stays standard JSON."""
    if isinstance(x, float) and x != x:
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


def write_report(r: dict[str, Any], out: str | Path) -> tuple[Path, Path]:
    """audit.json and audit.md in `out`, each written atomically."""
    out = Path(out)
    paths = out / "audit.json", out / "audit.md"
    write_text_atomic(paths[0], json.dumps(_json_safe(r), indent=1, ensure_ascii=False, allow_nan=False) + "\n")
    write_text_atomic(paths[1], report_markdown(r))
    return paths


# ---------------------------------------------------------------------------------------------
# `r1lab verify audit`


def cmd_audit(args: Any) -> int:
    s = AuditSettings(n=args.n, seed=args.seed, judge=args.judge or "", judge_model=args.judge_model,
                      judge_timeout=args.judge_timeout, concurrency=args.concurrency)
    if s.n < 0:
        raise ConfigError("--n must be >= 0")
    second_grader(s)  # a bad --judge fails before any reading
    if s.judge:
        check_endpoint(s.judge)
    items = load_items(args.input, args.problems)
    report = run_audit(items, s, source=str(args.input))
    report["hacking"] = hacking_by_step(args.input, args.problems)
    out = Path(args.out) if args.out else Path(args.input).with_name(Path(args.input).stem + ".audit")
    js, md = write_report(report, out)
    t, rates = report["table"], report["rates"]
    print(f"{report['graded']} of {report['verdicts']} verdicts graded again by the {report['grader']}; "
          f"agreement {_pct(report['agreement'])}")
    print(f"  rewarded, second grader says wrong:    {t['reward_correct']['second_wrong']} of "
          f"{t['reward_correct']['second_correct'] + t['reward_correct']['second_wrong']}")
    print(f"  not rewarded, second grader says right: {t['reward_not_correct']['second_correct']} of "
          f"{t['reward_not_correct']['second_correct'] + t['reward_not_correct']['second_wrong']}")
    for key in ("false_positive_rate", "false_negative_rate"):
        x = rates[key]
        print(f"  {key.replace('_', ' ')} of the reward: {_pct(x['estimate'])} (95%: {_pct(x['low'])} - {_pct(x['high'])})")
    hacking = report["hacking"]
    if hacking is not None:
        fired = {k: v for k, v in hacking["fired"].items() if v is not None}
        named = f" (paid by {hacking['paid_by']})" if hacking["paid_by"] else ""
        print("  reward hacking: " + ("; ".join(f"{k} fired at step {v}{named if k == 'rewarded_but_wrong' else ''}"
                                               for k, v in fired.items()) or f"nothing fired over {len(hacking['steps'])} steps"))
    print(f"wrote {md} and {js}")
    return 0


def register(subparsers: Any) -> None:
    """Add `r1lab verify audit` to the top-level parser's subcommands."""
    import argparse

    verify = subparsers.add_parser("verify", help="check the graders: audit recorded verdicts with a second grader")
    sub = verify.add_subparsers(dest="verify_command", required=True, metavar="COMMAND")
    p = sub.add_parser("audit", help="grade a sample of recorded verdicts again and report disagreements",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="eval per-problem JSONL (runs/X/eval/*.jsonl), RL samples.jsonl, or flat verdict rows")
    p.add_argument("--problems", help="Problem file for rows without prompt/answer (an RL run's samples.jsonl)")
    p.add_argument("--n", type=int, default=200, help="verdicts to grade again, half per recorded verdict (0 = all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--judge", help="OpenAI-compatible URL of an LLM judge (e.g. http://127.0.0.1:8000/v1 from r1lab serve); "
                   "default: the strict text-and-number grader")
    p.add_argument("--judge-model", default="default", help="model id to request from the judge")
    p.add_argument("--judge-timeout", type=float, default=60.0, help="seconds per judgement, retries included")
    p.add_argument("--concurrency", type=int, default=4, help="judge requests in flight")
    p.add_argument("--out", help="report directory (default: INPUT without .jsonl + .audit/)")
    p.set_defaults(func=cmd_audit)
