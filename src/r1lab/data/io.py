"""Import: read JSON Lines, JSON arrays, Parquet, CSV and saved HF dataset directories into `Problem`s,
or generate them from task families (`rg:<dataset>` of reasoning-gym, or r1lab's own).

Readers stream (JSONL line by line, Parquet by record batch, CSV row by row, HF datasets from their
memory-mapped Arrow files), so a large file never has to fit in memory. Every unusable row is named
by file and row number: by default it stops the import with a `DataError`; in lenient mode it is
skipped and counted under a reason, so nothing is dropped silently either way.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from r1lab.domains import setting
from r1lab.errors import ConfigError, DataError
from r1lab.images import canonical_images
from r1lab.records import Problem

FORMATS = ("auto", "jsonl", "json", "parquet", "csv", "hf")
PROBLEM_FIELDS = tuple(f.name for f in fields(Problem))
# common column names of public datasets, tried in order for a field the file lacks and no mapping names
FIELD_ALIASES = {"prompt": ("problem", "question"), "answer": ("final_answer", "expected_answer", "ground_truth", "gold"),
                 "images": ("image",)}


@dataclass
class ImportSettings:
    paths: list[str] = setting([], path="exists")  # files (or saved HF dataset directories) to read
    format: str = setting("auto", choices=FORMATS)  # auto (from the extension) | jsonl | json | parquet | csv | hf
    mapping: dict[str, str] = field(default_factory=dict)  # source column -> Problem field or metadata.KEY
    source: str = ""  # Problem.source for rows without one (default: the file's stem)
    task: str = "math"  # Problem.task for rows without one
    id_prefix: str = ""  # prepended to every id (keeps ids unique when files number rows alike)
    split: str = ""  # which split of a saved DatasetDict
    lenient: bool = False  # skip and count unusable rows instead of stopping at the first
    batch_rows: int = setting(2048, ge=1)  # Parquet rows per record batch
    # generated problems, after the files: task families (rg:<dataset> of reasoning-gym, or r1lab's
    # own, as data.tasks names them), each split as a run with these data settings would split it
    generate: list[str] = setting([], choices="r1lab.tasks:TASKS")
    size: int = setting(1000, ge=1)  # problems per generated family
    held_out: bool = False  # the held-out split (what a run evaluates on) instead of the training split
    eval_size: int = setting(200, ge=0)  # held-out problems a training split leaves out (a run's data.eval_size)
    difficulty: int = setting(2, ge=1)  # as data.difficulty
    seed: int = setting(1234, ge=0)  # as data.seed: the same seed gives the problems a run generates
    # where image paths are read from (relative to it, never outside it); default: each input's own directory
    image_dir: str = setting("", path="dir")


@dataclass
class BadRow:
    """A row that cannot become a Problem: `reason` is the short key counted in the manifest."""

    reason: str  # malformed | bad_encoding | missing_field | no_answer | duplicate_id | bad_image
    message: str


def parse_mapping(items: Iterable[str]) -> dict[str, str]:
    """`question->prompt` or `question=prompt` strings (the CLI's --map) into a mapping."""
    out: dict[str, str] = {}
    for item in items:
        sep = "->" if "->" in item else "="
        src, _, dst = item.partition(sep)
        if not src.strip() or not dst.strip():
            raise ConfigError(f"mapping '{item}' is not of the form column->field")
        out[src.strip()] = dst.strip()
    return out


def check_mapping(mapping: dict[str, str]) -> None:
    for src, dst in mapping.items():
        if dst not in PROBLEM_FIELDS and not (dst.startswith("metadata.") and len(dst) > 9):
            raise ConfigError(f"mapping '{src}->{dst}': '{dst}' is not a Problem field "
                              f"({', '.join(PROBLEM_FIELDS)}) or metadata.KEY")


def detect_format(path: Path, fmt: str = "auto") -> str:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format '{fmt}' (known: {', '.join(FORMATS)})")
    if fmt != "auto":
        return fmt
    if path.is_dir():
        return "hf"
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".json":
        return "json"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".csv", ".tsv"):
        return "csv"
    raise DataError(f"{path}: cannot tell the format from the extension; pass format: jsonl|json|parquet|csv|hf")


# --------------------------------------------------------------------------------------------
# raw readers: (row number, dict | BadRow); row numbers are 1-based lines (JSONL, CSV) or records


def _decoded_lines(path: Path, bad: dict[int, int]) -> Iterator[str]:
    """Text lines of a file read as bytes, so a non-UTF-8 line is found with its line number.
    Undecodable lines are recorded in `bad` (line -> first bad byte) and passed on with
    replacement characters."""
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                bad[lineno] = e.start
                line = raw.decode("utf-8", errors="replace")
            yield line.lstrip("\ufeff") if lineno == 1 else line


def _read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    bad: dict[int, int] = {}
    for lineno, line in enumerate(_decoded_lines(path, bad), 1):
        if lineno in bad:
            yield lineno, BadRow("bad_encoding", f"not UTF-8 text (byte {bad[lineno]} of the line)")
            continue
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line.rstrip("\r\n"))
        except json.JSONDecodeError as e:
            yield lineno, BadRow("malformed", f"not valid JSON ({e.msg}, column {e.colno})")


def _read_json(path: Path) -> Iterator[tuple[int, Any]]:
    """A JSON file holding one array of objects (not streamed: JSON arrays cannot be)."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: a .json file must hold an array of objects (use .jsonl for one object per line)")
    yield from enumerate(data, 1)


def _read_csv(path: Path) -> Iterator[tuple[int, Any]]:
    bad: dict[int, int] = {}
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.reader(_decoded_lines(path, bad), delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            return
        start = reader.line_num + 1
        for values in reader:
            lineno, end = start, reader.line_num
            start = end + 1
            if any(n in bad for n in range(lineno, end + 1)):
                yield lineno, BadRow("bad_encoding", "not UTF-8 text")
            elif not any(v.strip() for v in values):
                continue
            elif len(values) != len(header):
                yield lineno, BadRow("malformed", f"{len(values)} fields where the header has {len(header)}")
            else:
                yield lineno, {k: (v if v != "" else None) for k, v in zip(header, values)}
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: not valid CSV ({e})") from None


def _read_parquet(path: Path, batch_rows: int) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a corrupt or empty file
        raise DataError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
    n = 0
    for batch in pf.iter_batches(batch_size=max(1, batch_rows)):
        for row in batch.to_pylist():
            n += 1
            yield n, row


def _read_hf(path: Path, split: str) -> Iterator[tuple[int, Any]]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:
        raise DataError(f"{path}: not a saved Hugging Face dataset ({str(e).splitlines()[0]})") from None
    if isinstance(ds, datasets.DatasetDict):
        if not split and len(ds) == 1:
            split = next(iter(ds))
        if split not in ds:
            raise DataError(f"{path}: a DatasetDict; choose a split with split: NAME (splits: {', '.join(ds)})")
        ds = ds[split]
    for n, row in enumerate(ds, 1):
        yield n, row


def read_rows(path: str | Path, fmt: str = "auto", split: str = "", batch_rows: int = 2048) -> Iterator[tuple[int, Any]]:
    """(row number, raw object or BadRow) for every row of `path`; DataError for an unreadable or
    empty file."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    kind = detect_format(path, fmt)
    readers: dict[str, Callable[[], Iterator[tuple[int, Any]]]] = {
        "jsonl": lambda: _read_jsonl(path),
        "json": lambda: _read_json(path),
        "csv": lambda: _read_csv(path),
        "parquet": lambda: _read_parquet(path, batch_rows),
        "hf": lambda: _read_hf(path, split),
    }
    empty = True
    for item in readers[kind]():
        empty = False
        yield item
    if empty:
        raise DataError(f"{path}: empty file (no rows)")


# --------------------------------------------------------------------------------------------
# raw row -> Problem


def _usable_answer(value: Any) -> str | None:
    if value is None or isinstance(value, (list, dict, bool)):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


def _usable_prompt(value: Any) -> str | list[dict[str, str]] | None:
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, list) and value and all(isinstance(m, dict) and "content" in m for m in value):
        return value
    return None


def to_problem(raw: Any, mapping: dict[str, str], default_id: str, default_source: str, default_task: str,
               data_dir: Path | None = None) -> Problem | BadRow:
    """One raw row as a Problem: mapped columns go to their field, unmapped columns named like a
    Problem field go there, every other column into metadata. Images (one or a list: paths inside
    `data_dir`, bytes, data URLs, HF image values) are checked and kept as PNG data URLs."""
    if not isinstance(raw, dict):
        return BadRow("malformed", f"expected an object with named fields, got {type(raw).__name__}")
    row: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    targets = set(mapping.values())
    for key, value in raw.items():
        dst = mapping.get(key)
        if dst is None:
            dst = key if key in PROBLEM_FIELDS and key not in targets else f"metadata.{key}"
        if dst == "metadata":
            if isinstance(value, dict):
                metadata.update(value)
        elif dst.startswith("metadata."):
            metadata[dst[9:]] = value
        else:
            row[dst] = value
    prompt = _usable_prompt(row.get("prompt"))
    if prompt is None:
        return BadRow("missing_field", "no usable 'prompt' (missing, empty or not text/chat messages)" + _hint(raw, mapping, "prompt"))
    answer = _usable_answer(row.get("answer"))
    if answer is None:
        return BadRow("no_answer", "no usable 'answer' (missing, empty or not a scalar)" + _hint(raw, mapping, "answer"))
    tests = row.get("tests")
    if tests is not None and not isinstance(tests, list):
        return BadRow("malformed", f"'tests' must be a list, got {type(tests).__name__}")
    try:
        images = canonical_images(row.get("images"), data_dir, "image")
    except DataError as e:
        return BadRow("bad_image", str(e))
    rid = row.get("id")
    return Problem(
        id=default_id if rid is None or str(rid).strip() == "" else str(rid),
        prompt=prompt,
        answer=answer,
        task=str(row.get("task") or default_task),
        tests=tests,
        source=str(row.get("source") or default_source),
        metadata=metadata,
        images=images,
    )


def detect_mapping(columns: Iterable[str], mapping: dict[str, str]) -> dict[str, str]:
    """`mapping` plus, for each of prompt and answer that the columns lack and the mapping does not
    fill, the first column named like it in FIELD_ALIASES (`problem` -> prompt, ...)."""
    columns = list(columns)
    out = dict(mapping)
    for target, aliases in FIELD_ALIASES.items():
        if target in out.values() or target in columns:
            continue
        alias = next((a for a in aliases if a in columns and a not in out), None)
        if alias is not None:
            out[alias] = target
    return out


def _hint(raw: dict[str, Any], mapping: dict[str, str], target: str) -> str:
    if target in mapping.values():
        return ""
    return f"; map a column to it, e.g. --map COLUMN->{target} (columns: {', '.join(map(str, list(raw)[:12]))})"


def import_problems(
    settings: ImportSettings, on_skip: Callable[[str, str, str], None] | None = None,
    on_detect: Callable[[str, dict[str, str]], None] | None = None,
) -> Iterator[Problem]:
    """Stream the Problems of every file in `settings.paths`, in order.

    A bad row raises DataError naming file and row, unless `settings.lenient`: then
    `on_skip(row_ref, reason, message)` is called and the row skipped. A mapping column absent from
    a file (its header, schema or first row) is always an error: it is a config mistake, not bad data.
    A file without a `prompt` (or `answer`) column that the mapping does not fill gets its
    `problem`/`question` (or `final_answer`, ...) column, found from its first row
    (FIELD_ALIASES); `on_detect(path, columns found)` is told.
    """
    check_mapping(settings.mapping)
    if not settings.paths and not settings.generate:
        raise ConfigError("import: no input files (paths: [...]) and no families to generate (generate: [rg:...])")
    seen_ids: set[str] = set()
    for p in settings.paths:
        path = Path(p)
        stem = path.name if path.is_dir() else path.stem
        columns_checked = False
        mapping = settings.mapping
        for n, raw in read_rows(path, settings.format, settings.split, settings.batch_rows):
            ref = f"{path}:{n}"
            if not columns_checked and isinstance(raw, dict):
                missing = [c for c in settings.mapping if c not in raw]
                if missing:
                    raise DataError(f"{ref}: mapping names column '{missing[0]}', which the file does not have "
                                    f"(columns: {', '.join(map(str, raw))})")
                mapping = detect_mapping(raw, settings.mapping)
                if on_detect is not None and len(mapping) > len(settings.mapping):
                    on_detect(str(path), {k: v for k, v in mapping.items() if k not in settings.mapping})
                columns_checked = True
            item = raw if isinstance(raw, BadRow) else to_problem(
                raw, mapping, f"{settings.id_prefix}{stem}-{n}", settings.source or stem, settings.task,
                Path(settings.image_dir) if settings.image_dir else (path if path.is_dir() else path.parent),
            )
            if isinstance(item, Problem):
                if settings.id_prefix and not item.id.startswith(settings.id_prefix):
                    item.id = settings.id_prefix + item.id
                if item.id in seen_ids:
                    item = BadRow("duplicate_id", f"id {item.id!r} already used by an earlier row (set id_prefix per file?)")
                else:
                    seen_ids.add(item.id)
                    yield item
                    continue
            if not settings.lenient:
                raise DataError(f"{ref}: {item.message}")
            if on_skip is not None:
                on_skip(ref, item.reason, item.message)
    for problem in generated_problems(settings):
        if problem.id in seen_ids:
            raise DataError(f"generated problem id {problem.id!r} is also the id of an imported row")
        seen_ids.add(problem.id)
        yield problem


def generated_problems(settings: ImportSettings) -> list[Problem]:
    """The problems of each family in `settings.generate`: the training split (without the
    `eval_size` held-out problems) or the held-out split, as `data.tasks` with the same seed and
    difficulty would generate it (the held-out split's first N problems do not depend on N)."""
    from r1lab.tasks import generate_splits

    out: list[Problem] = []
    for name in settings.generate:
        train, held = generate_splits([name], 0 if settings.held_out else settings.size,
                                      settings.size if settings.held_out else settings.eval_size,
                                      settings.difficulty, settings.seed)
        out += held if settings.held_out else train
    return out


def read_problems(path: str | Path, lenient: bool = False, mapping: dict[str, str] | None = None) -> Iterator[Problem]:
    """Problems from a file in the Problem schema (any supported format; `mapping` as import's), streamed."""
    yield from import_problems(ImportSettings(paths=[str(path)], lenient=lenient, mapping=dict(mapping or {})),
                               on_skip=lambda ref, reason, msg: print(f"skipped {ref}: {msg}", file=sys.stderr))
