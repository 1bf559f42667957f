"""A curation pipeline: an ordered list of steps, each a function `(rows, settings, log) -> rows`.

Rows stream from step to step as generators, so import, dedup and decontamination of a large file
run in bounded memory (dedup holds hashes, not rows). Every run writes a manifest beside its
output: rows in and out per step, every dropped row with its reason, timings, peak memory, and the
paths of the step reports (decontamination hits, inspect plots). The output, the manifest and every
report are written to a temporary file and renamed, so a failed run leaves no half-written file; a
failed run's manifest says `"status": "failed"` and why.

    output: curated/math.jsonl
    lenient: false                 # default for every import step
    steps:
      - import: {paths: [raw.parquet], mapping: {question: prompt, final_answer: answer}}
      - dedup: {threshold: 0.7}
      - decontaminate: {benchmarks: [math500.jsonl, aime24.jsonl], ngram: 8}
      - verify: {field: solution}
      - reject-sample: {model: runs/sft/checkpoints/sft, k: 8, policy: shortest-correct}
      - filter: {min_pass: 0.0625, max_pass: 0.9375}
      - pairs: {model: runs/sft/checkpoints/sft, k: 8, chosen: shortest, rejected: confident}
      - select: {n: 1000, cluster_by: minhash, trace_field: responses}
      - inspect: {}

Relative paths are read from the current directory, like every other r1lab path.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import yaml

from r1lab.config import build_section, suggest_key
from r1lab.domains import check_fields
from r1lab.data.decontam import DecontamSettings, decontaminate
from r1lab.data.dedup import DedupSettings, dedup
from r1lab.data.filter import FilterSettings, difficulty_filter
from r1lab.data.inspect import Inspector, InspectSettings, group_of
from r1lab.data.io import ImportSettings, import_problems
from r1lab.data.pairs import PairSettings, make_pairs
from r1lab.data.reject import RejectSettings, reject_sample
from r1lab.data.subset import SelectSettings, select_examples
from r1lab.data.verify_traces import VerifySettings, verify_traces
from r1lab.errors import ConfigError
from r1lab.records import Problem, write_jsonl, write_text_atomic


class StepLog:
    """What one step did: counts, drops with reasons, time, reports. Steps call `drop` and `report_path`."""

    def __init__(self, index: int, name: str, settings: Any, reports_dir: Path) -> None:
        self.index, self.name, self.settings, self.reports_dir = index, name, settings, reports_dir
        self.rows_in = 0
        self.rows_out = 0
        self.seconds = 0.0  # inclusive of the upstream steps that ran inside this step's pulls
        self.drops: dict[str, list[Any]] = {}
        self.reports: list[str] = []
        self.notes: dict[str, Any] = {}

    def drop(self, row_id: str, reason: str, detail: str = "") -> None:
        self.drops.setdefault(reason, []).append([row_id, detail] if detail else row_id)

    def report_path(self, filename: str) -> Path:
        path = self.reports_dir / f"{self.index:02d}-{self.name}-{filename}"
        self.reports.append(str(path))
        return path

    def to_dict(self, upstream_seconds: float) -> dict[str, Any]:
        own = max(self.seconds - upstream_seconds, 0.0)
        rows = self.rows_out if self.name == "import" else self.rows_in
        return {
            "step": self.name,
            "settings": dataclasses.asdict(self.settings),
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "dropped": {reason: len(ids) for reason, ids in self.drops.items()},
            "seconds": round(own, 3),
            "rows_per_s": round(rows / own, 1) if own > 0 else None,
            "reports": self.reports,
            **({"notes": self.notes} if self.notes else {}),
            "drops": self.drops,
        }


class JsonlSink:
    """A report file written line by line to a temporary path and renamed only when complete."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.chmod(self.tmp, 0o644)  # mkstemp makes it private; reports are ordinary files
        self.f = os.fdopen(fd, "w", encoding="utf-8")
        self.count = 0

    def write(self, obj: dict[str, Any]) -> None:
        self.f.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self.count += 1

    def __enter__(self) -> "JsonlSink":
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.f.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            Path(self.tmp).unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# steps: (rows, settings, log) -> rows

Rows = Iterable[Problem]


def step_import(rows: Rows, s: ImportSettings, log: StepLog) -> Iterator[Problem]:
    """Rows from upstream (an earlier import) followed by the rows of s.paths."""
    for p in rows:
        log.rows_in += 1
        yield p
    detected = log.notes.setdefault("detected_columns", {})
    yield from import_problems(s, on_skip=log.drop, on_detect=detected.__setitem__)
    if not detected:
        del log.notes["detected_columns"]


def _counted(rows: Rows, log: StepLog) -> Iterator[Problem]:
    for p in rows:
        log.rows_in += 1
        yield p


def step_dedup(rows: Rows, s: DedupSettings, log: StepLog) -> Iterator[Problem]:
    return dedup(_counted(rows, log), s, log.drop)


def step_decontaminate(rows: Rows, s: DecontamSettings, log: StepLog) -> Iterator[Problem]:
    with JsonlSink(log.report_path("hits.jsonl")) as sink:
        yield from decontaminate(_counted(rows, log), s, log.drop, sink.write)
        log.notes["hits"] = sink.count


def step_verify(rows: Rows, s: VerifySettings, log: StepLog) -> Iterator[Problem]:
    return verify_traces(_counted(rows, log), s, log.drop)


def step_reject(rows: Rows, s: RejectSettings, log: StepLog) -> Iterator[Problem]:
    rates: list[float] = []
    yield from reject_sample(_counted(rows, log), s, log.drop, on_rate=rates.append)
    log.notes["mean_pass_rate"] = round(sum(rates) / len(rates), 4) if rates else None


def step_pairs(rows: Rows, s: PairSettings, log: StepLog) -> Iterator[Problem]:
    rates: list[float] = []
    yield from make_pairs(_counted(rows, log), s, log.drop, on_rate=rates.append)
    log.notes["mean_pass_rate"] = round(sum(rates) / len(rates), 4) if rates else None


def step_filter(rows: Rows, s: FilterSettings, log: StepLog) -> Iterator[Problem]:
    return difficulty_filter(_counted(rows, log), s, log.drop)


def step_select(rows: Rows, s: SelectSettings, log: StepLog) -> Iterator[Problem]:
    with JsonlSink(log.report_path("selected.jsonl")) as sink:
        yield from select_examples(_counted(rows, log), s, log.drop, on_selected=sink.write, notes=log.notes)


def step_inspect(rows: Rows, s: InspectSettings, log: StepLog) -> Iterator[Problem]:
    """Passes every row through; at the end writes plots and a summary of the rows it saw."""
    ins = Inspector(s)
    for p in _counted(rows, log):
        ins.add(group_of(p, s.group_by), p)
        yield p
    out = log.reports_dir / f"{log.index:02d}-inspect"
    ins.finish(out)
    log.reports += [str(out / f) for f in ("inspect.json", "lengths.png", "overlap.png")]


@dataclass(frozen=True)
class StepKind:
    settings: type
    fn: Callable[[Rows, Any, StepLog], Iterator[Problem]]
    help: str


STEPS: dict[str, StepKind] = {
    "import": StepKind(ImportSettings, step_import, "read JSONL/JSON/Parquet/CSV/HF dataset dirs into problems"),
    "dedup": StepKind(DedupSettings, step_dedup, "drop exact, near (MinHash LSH) and embedding duplicates"),
    "decontaminate": StepKind(DecontamSettings, step_decontaminate, "drop rows that overlap benchmark files"),
    "verify": StepKind(VerifySettings, step_verify, "check given reasoning traces against the answer"),
    "reject-sample": StepKind(RejectSettings, step_reject, "sample k responses with a model, keep verified ones"),
    "pairs": StepKind(PairSettings, step_pairs, "sample k responses with a model, pair a correct one against a wrong one"),
    "filter": StepKind(FilterSettings, step_filter, "keep problems whose pass rate lies in a window"),
    "select": StepKind(SelectSettings, step_select, "keep N rows chosen for quality, difficulty and diversity (LIMO, s1)"),
    "inspect": StepKind(InspectSettings, step_inspect, "length histogram, counts per source, overlap matrix"),
}


# --------------------------------------------------------------------------------------------
# a pipeline: config, loading, running


@dataclass
class Pipeline:
    output: str  # curated JSONL
    steps: list[tuple[str, Any]] = field(default_factory=list)  # (step name, its settings)
    manifest: str = ""  # default: OUTPUT without .jsonl + .manifest.json
    reports: str = ""  # default: OUTPUT without .jsonl + .reports/
    source: str = ""  # the YAML it came from

    def paths(self) -> tuple[Path, Path, Path]:
        out = Path(self.output)
        stem = out.with_suffix("") if out.suffix == ".jsonl" else out
        manifest = Path(self.manifest) if self.manifest else stem.with_name(stem.name + ".manifest.json")
        reports = Path(self.reports) if self.reports else stem.with_name(stem.name + ".reports")
        return out, manifest, reports


TOP_KEYS = ("output", "manifest", "reports", "lenient", "steps", "description")


def build_step(name: str, settings: Any, where: str) -> tuple[str, Any]:
    if name not in STEPS:
        raise ConfigError(f"{where}: unknown step '{name}'{suggest_key(name, list(STEPS), '')}")
    if settings is None:
        settings = {}
    if not isinstance(settings, dict):
        raise ConfigError(f"{where}: settings of step '{name}' must be a mapping, got {settings!r}")
    return name, build_section(STEPS[name].settings, settings, name)


def _apply_override(data: dict[str, Any], override: str) -> None:
    """`output=x.jsonl` sets a top-level key; `dedup.threshold=0.8` sets a setting of every dedup step."""
    if "=" not in override:
        raise ConfigError(f"override '{override}' is not of the form key=value or step.key=value")
    key, raw = (part.strip() for part in override.split("=", 1))
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    if "." not in key:
        data[key] = value
        return
    step, setting = key.split(".", 1)
    matched = [entry for entry in data.get("steps") or [] if isinstance(entry, dict) and step in entry]
    if not matched:
        raise ConfigError(f"override '{override}': the pipeline has no '{step}' step")
    for entry in matched:
        entry[step] = {**(entry[step] or {}), setting: value}


def parse_pipeline(data: Any, where: str, overrides: Iterable[str] = ()) -> Pipeline:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a pipeline must be a mapping with output and steps")
    data = json.loads(json.dumps(data))  # a private copy that overrides may edit
    if isinstance(data.get("steps"), list):  # a bare step name means default settings
        data["steps"] = [{entry: {}} if isinstance(entry, str) else entry for entry in data["steps"]]
    for o in overrides:
        _apply_override(data, o)
    for key in data:
        if key not in TOP_KEYS:
            raise ConfigError(f"{where}: unknown key '{key}'{suggest_key(key, list(TOP_KEYS), '')}")
    if not data.get("output"):
        raise ConfigError(f"{where}: no 'output' (the curated JSONL to write)")
    entries = data.get("steps")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{where}: 'steps' must be a non-empty list, e.g. [{{import: {{paths: [raw.jsonl]}}}}, dedup]")
    steps = []
    for i, entry in enumerate(entries):
        here = f"{where}: steps[{i}]"
        if not isinstance(entry, dict) or len(entry) != 1:
            raise ConfigError(f"{here}: each step is a name or a mapping {{name: {{settings}}}}")
        (name, settings), = entry.items()
        if name == "import" and isinstance(settings, dict) and "lenient" in data:
            settings = {"lenient": data["lenient"], **settings}
        steps.append(build_step(name, settings, here))
    if steps[0][0] != "import":
        raise ConfigError(f"{where}: the first step must be 'import' (it reads the input files)")
    return Pipeline(output=str(data["output"]), steps=steps, manifest=str(data.get("manifest") or ""),
                    reports=str(data.get("reports") or ""), source=where)


def load_pipeline(path: str | Path, overrides: Iterable[str] = ()) -> Pipeline:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"pipeline file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        mark = getattr(e, "problem_mark", None)
        raise ConfigError(f"{path}{f':{mark.line + 1}' if mark else ''}: not a valid YAML file") from None
    return parse_pipeline(data, str(path), overrides)


def _metered(rows: Iterable[Problem], log: StepLog) -> Iterator[Problem]:
    """Count a step's output rows and the time spent producing them (upstream time included)."""
    it = iter(rows)
    while True:
        t0 = time.perf_counter()
        try:
            p = next(it)
        except StopIteration:
            log.seconds += time.perf_counter() - t0
            return
        log.seconds += time.perf_counter() - t0
        log.rows_out += 1
        yield p


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def check_steps(p: Pipeline) -> None:
    """Before anything is written: every step's settings in their domains and the files and models
    they name present (a step's settings were checked when read, its paths only now: a pipeline
    stage's input is written by the stages before it)."""
    for name, s in p.steps:
        check_fields(s, name, paths=True)
        if name in ("reject-sample", "pairs") and not s.model:
            raise ConfigError(f"{name}: samples a model: give one (model: a local Hugging Face directory; --model)")


def run_pipeline(p: Pipeline) -> dict[str, Any]:
    """Run every step, write the output and the manifest; returns the manifest."""
    check_steps(p)
    out, manifest_path, reports = p.paths()
    logs = [StepLog(i, name, settings, reports) for i, (name, settings) in enumerate(p.steps)]
    rows: Iterable[Problem] = iter(())
    for log in logs:
        rows = _metered(STEPS[log.name].fn(rows, log.settings, log), log)
    started, t0 = time.strftime("%Y-%m-%dT%H:%M:%S"), time.perf_counter()
    status, error = "failed", ""
    try:
        write_jsonl(out, (row.to_dict() for row in rows))
        status = "ok"
    except BaseException as e:
        error = str(e) or type(e).__name__
        raise
    finally:
        steps, upstream = [], 0.0
        for log in logs:
            steps.append(log.to_dict(upstream))
            upstream = log.seconds
        manifest = {
            "status": status, **({"error": error} if error else {}),
            "pipeline": p.source, "output": str(out) if status == "ok" else None,
            "rows_out": logs[-1].rows_out if status == "ok" else None,
            "started": started, "seconds": round(time.perf_counter() - t0, 3), "peak_rss_mb": round(peak_rss_mb(), 1),
            "steps": steps,
        }
        write_text_atomic(manifest_path, json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return manifest


def summary_table(manifest: dict[str, Any]) -> str:
    """The manifest as a short text table for the terminal."""
    lines = [f"{'step':<14} {'in':>9} {'out':>9} {'s':>8} {'rows/s':>9}  dropped"]
    for st in manifest["steps"]:
        dropped = ", ".join(f"{k} {v}" for k, v in st["dropped"].items()) or "-"
        rate = f"{st['rows_per_s']:.0f}" if st["rows_per_s"] else "-"
        lines.append(f"{st['step']:<14} {st['rows_in']:>9} {st['rows_out']:>9} {st['seconds']:>8.2f} {rate:>9}  {dropped}")
    return "\n".join(lines)
