"""A text corpus for continued pre-training: documents read from a JSONL file (one per row, the text
in a named field), from a .txt / .md file (the whole file is one document), or from a directory of
such files (every .jsonl, .txt and .md under it, in path order).

Everything wrong with the input is one line naming the file and row: a missing path, a directory
with no corpus file, a row that is not a JSON object, a row without the text field or with a
non-text value, a file that is not UTF-8, a corpus with no text at all. Blank documents are skipped
(and counted), not errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from r1lab.errors import ConfigError, DataError
from r1lab.records import read_jsonl

TEXT_SUFFIXES = (".txt", ".md")
CORPUS_SUFFIXES = (".jsonl", *TEXT_SUFFIXES)


@dataclass
class Corpus:
    documents: list[str]
    files: list[Path]
    blank: int  # documents skipped as empty or whitespace only


def corpus_files(path: str | Path) -> list[Path]:
    """The files of a corpus path: the file itself, or every corpus file under a directory."""
    if not str(path):
        raise ConfigError("cpt.corpus: no corpus given (a JSONL file with a text field, a .txt / .md file, "
                          "or a directory of them)")
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"cpt.corpus={path}: not found")
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in CORPUS_SUFFIXES)
        if not files:
            raise DataError(f"cpt.corpus={path}: no {', '.join(CORPUS_SUFFIXES)} file in this directory")
        return files
    if p.suffix.lower() not in CORPUS_SUFFIXES:
        raise DataError(f"cpt.corpus={path}: expected a {', '.join(CORPUS_SUFFIXES)} file or a directory of them")
    return [p]


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None


def _jsonl_documents(path: Path, text_field: str) -> list[str]:
    docs = []
    for n, row in read_jsonl(path):
        if not isinstance(row, dict):
            raise DataError(f"{path}:{n}: expected a JSON object with a {text_field!r} field, got {type(row).__name__}")
        if text_field not in row:
            fields = ", ".join(sorted(map(str, row))[:8]) or "none"
            raise DataError(f"{path}:{n}: no {text_field!r} field (cpt.text_field; the row has: {fields})")
        text = row[text_field]
        if not isinstance(text, str):
            raise DataError(f"{path}:{n}: {text_field!r} is not text ({type(text).__name__})")
        docs.append(text)
    return docs


def read_corpus(path: str | Path, text_field: str = "text") -> Corpus:
    """Every non-blank document of the corpus at `path`, in file order."""
    files = corpus_files(path)
    docs: list[str] = []
    for f in files:
        docs += _jsonl_documents(f, text_field) if f.suffix.lower() == ".jsonl" else [_read_text(f)]
    kept = [d for d in docs if d.strip()]
    if not kept:
        raise DataError(f"cpt.corpus={path}: no text ({len(docs)} documents, all blank)")
    return Corpus(kept, files, len(docs) - len(kept))


__all__ = ["CORPUS_SUFFIXES", "Corpus", "corpus_files", "read_corpus"]
