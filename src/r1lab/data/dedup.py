"""Dedup: exact (normalised-text hash), near-duplicate (MinHash LSH) and optional embedding similarity.

Rows are decided in arrival order, so the first row of every cluster is the one kept and each later
row either starts a cluster or joins one. Clusters are stars: a row joins a cluster when it is
similar to the cluster's kept row itself (the earliest such row if several), not merely to some
member. Transitive closure (union-find over all rows) was measured and rejected: chains
A~B~C~... drift until C has little to do with A, and on templated data one giant cluster makes
every LSH query return thousands of candidates (1.2k rows/s instead of the rate in BENCHMARKS.md).

What "duplicate" means is set by the normalisation: case, whitespace, punctuation, `$`, braces and
LaTeX spacing (`\\,` `\\!` `\\left` `\\right` ...) never matter, and with `mask_numbers` (the default)
neither do the numbers, so "a train leaves at 60 km/h" and "... at 75 km/h" are one problem.
Turn `mask_numbers` off to keep number-only variants (e.g. for generated arithmetic).

Rows with images are duplicates only when their text and every image's pixels are the same (an
exact sha256 of the decoded RGB pixels, `images.pixel_hash`); the near-duplicate and embedding
stages, which compare text, pass them through. A perceptual hash was considered and rejected: the
images of generated visual problems differ by one shape, one bar or one digit, exactly what a
perceptual hash is built to ignore, so it would merge distinct problems (and, in decontamination,
call a held-out problem contaminated by a different one).

Each kept row records the ids it absorbed in `metadata["absorbed"]`. Because that list is only
complete after the last row, kept rows are spooled to a temporary file and re-read at the end:
memory holds hashes and signatures, never the rows.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from r1lab.domains import check_fields, setting
from r1lab.errors import ModelError
from r1lab.images import pixel_hash
from r1lab.records import Problem, prompt_text

# LaTeX that changes spacing or sizing but not content, and text-mode wrappers whose argument is kept
_LATEX_NOISE = re.compile(
    r"\\(?:left|right|bigl|bigr|big|Big|displaystyle|textstyle|qquad|quad|text|textbf|textit|mathrm|mathbf|operatorname)"
    r"(?![A-Za-z])|\\[,!;:> ]|\$|~"
)
_FRAC = re.compile(r"\\[dt]frac(?![A-Za-z])")
# a token is a LaTeX command, a word, a number, or one symbol; braces, brackets and sentence punctuation are not tokens
_TOKEN = re.compile(r"\\[^\W\d_]+|[^\W\d_]+|\d+(?:[.,]\d+)*|[^\s\w{}()\[\].,;:!?'\"\\]")
_NUMBER = re.compile(r"\d")


def prompt_of(problem: Problem) -> str:
    """The problem statement as plain text (a chat prompt: its user turns)."""
    return prompt_text(problem.prompt, which="user")


def tokens(text: str, mask_numbers: bool = False) -> list[str]:
    """Normalised tokens: the unit that exact hashes, shingles and decontamination n-grams share."""
    text = _FRAC.sub(r"\\frac", _LATEX_NOISE.sub(" ", text)).lower()
    toks = _TOKEN.findall(text)
    return mask(toks) if mask_numbers else toks


def mask(toks: list[str]) -> list[str]:
    """Every number token replaced by `#`."""
    return ["#" if _NUMBER.match(t) else t for t in toks]


def text_key(toks: list[str]) -> bytes:
    """A 16-byte digest of the normalised text (collisions are negligible at any dataset size)."""
    return hashlib.blake2b(" ".join(toks).encode("utf-8"), digest_size=16).digest()


def shingles(toks: list[str], n: int, kind: str = "word") -> set[bytes]:
    """Word n-grams (or character n-grams of the normalised text); a text shorter than n is one shingle."""
    if kind == "char":
        s = " ".join(toks)
        return {s[i : i + n].encode("utf-8") for i in range(max(1, len(s) - n + 1))}
    if len(toks) <= n:
        return {" ".join(toks).encode("utf-8")}
    return {" ".join(toks[i : i + n]).encode("utf-8") for i in range(len(toks) - n + 1)}


@dataclass
class DedupSettings:
    exact: bool = True  # drop rows whose normalised text equals an earlier row's
    minhash: bool = True  # drop near-duplicates found by MinHash LSH
    threshold: float = setting(0.7, gt=0, le=1)  # estimated Jaccard similarity of the shingle sets that makes a near-duplicate
    num_perm: int = setting(128, ge=8)  # MinHash permutations (more: sharper threshold, more memory)
    ngram: int = setting(3, ge=1)  # shingle size: words (or characters with shingle: char)
    shingle: str = setting("word", choices=("word", "char"))  # word | char
    mask_numbers: bool = True  # numbers do not distinguish problems ("differs only in a number" = duplicate)
    verify: bool = True  # confirm each LSH candidate by its estimated Jaccard (fewer false merges, 4 bytes/perm/row)
    include_answer: bool = False  # compare prompt + answer (problems that differ in the answer stay apart)
    embedding_model: str = setting("", path="dir")  # local sentence-embedding model dir (e.g. all-MiniLM-L6-v2); "" = off
    embedding_threshold: float = setting(0.95, gt=0, le=1)  # cosine similarity that makes an embedding duplicate
    embedding_batch: int = setting(64, ge=1)
    seed: int = setting(1, ge=0)  # MinHash permutation seed


DropFn = Callable[[str, str, str], None]  # (row id, reason, detail)


class NearDupIndex:
    """MinHash LSH over the kept rows. A new row joins the earliest kept row among its (verified)
    candidates, so every cluster is a star around its representative."""

    def __init__(self, s: DedupSettings) -> None:
        from datasketch import MinHash, MinHashLSH

        self.s = s
        self._MinHash = MinHash
        template = MinHash(num_perm=s.num_perm, seed=s.seed)
        self._perms, self._scheme = template.permutations, template.scheme  # made once, shared by every row
        self.lsh = MinHashLSH(threshold=s.threshold, num_perm=s.num_perm)
        self.kept_ids: list[str] = []
        self.sigs = np.zeros((1024, s.num_perm), dtype=np.uint32) if s.verify else None

    def signature(self, toks: list[str]) -> Any:
        m = self._MinHash(num_perm=self.s.num_perm, seed=self.s.seed, permutations=self._perms, scheme=self._scheme)
        m.update_batch(list(shingles(toks, self.s.ngram, self.s.shingle)))
        return m

    def add(self, row_id: str, toks: list[str]) -> str | None:
        """Return the id of the kept row this row duplicates, or None (then it is kept and indexed)."""
        m = self.signature(toks)
        cands = self.lsh.query(m)
        if cands and self.sigs is not None:
            idx = np.fromiter(cands, dtype=np.int64, count=len(cands))
            est = (self.sigs[idx] == m.hashvalues.astype(np.uint32)).mean(axis=1)
            cands = idx[est >= self.s.threshold].tolist()
        if cands:
            return self.kept_ids[min(cands)]
        i = len(self.kept_ids)
        self.kept_ids.append(row_id)
        if self.sigs is not None:
            if i >= len(self.sigs):
                self.sigs = np.concatenate([self.sigs, np.zeros_like(self.sigs)])
            self.sigs[i] = m.hashvalues  # < 2**32 under datasketch's default scheme
        self.lsh.insert(i, m, check_duplication=False)
        return None


class EmbeddingIndex:
    """Mean-pooled, L2-normalised sentence embeddings from a local transformers model; brute-force
    cosine search against every kept row (exact, O(rows x kept): meant for up to ~1e5 rows)."""

    def __init__(self, path: str, threshold: float, batch: int) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        try:
            self.tok = AutoTokenizer.from_pretrained(path)
            self.model = AutoModel.from_pretrained(path).eval()
        except Exception as e:
            raise ModelError(f"cannot load the embedding model from {path}: {str(e).splitlines()[0]}") from None
        self.torch = torch
        self.threshold, self.batch = threshold, batch
        self.kept = np.zeros((0, self.model.config.hidden_size), dtype=np.float32)
        self.kept_ids: list[str] = []

    def embed(self, texts: list[str]) -> np.ndarray:
        torch = self.torch
        enc = self.tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.inference_mode():
            hidden = self.model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return torch.nn.functional.normalize(pooled, dim=-1).float().numpy()

    def add_batch(self, ids: list[str], texts: list[str]) -> list[str | None]:
        """For each row in order: the kept id it duplicates, or None (then it is kept)."""
        out: list[str | None] = []
        for row_id, e in zip(ids, self.embed(texts)):
            if len(self.kept_ids):
                sims = self.kept @ e
                j = int(sims.argmax())
                if sims[j] >= self.threshold:
                    out.append(self.kept_ids[j])
                    continue
            self.kept = np.vstack([self.kept, e[None]])
            self.kept_ids.append(row_id)
            out.append(None)
        return out


def _text(p: Problem, include_answer: bool) -> str:
    return prompt_of(p) + (f"\nanswer: {p.answer}" if include_answer else "")


def dedup(rows: Iterable[Problem], s: DedupSettings, drop: DropFn) -> Iterator[Problem]:
    """The rows that are not duplicates of an earlier row, in order, each with the ids it absorbed
    in metadata["absorbed"]; `drop(id, reason, kept_id)` is called for every removed row."""
    check_fields(s, "dedup")
    absorbed: dict[str, list[str]] = {}
    seen: dict[bytes, str] = {}
    near = NearDupIndex(s) if s.minhash else None
    emb = EmbeddingIndex(s.embedding_model, s.embedding_threshold, s.embedding_batch) if s.embedding_model else None

    def absorb(row_id: str, kept: str, reason: str) -> None:
        absorbed.setdefault(kept, []).append(row_id)
        drop(row_id, reason, kept)

    def text_stage() -> Iterator[Problem]:
        for p in rows:
            toks = tokens(_text(p, s.include_answer))
            if s.exact:
                key = text_key(toks) + b"".join(b"|" + pixel_hash(url).encode() for url in p.images)
                if key in seen:
                    absorb(p.id, seen[key], "exact_duplicate")
                    continue
                seen[key] = p.id
            if p.images:  # text similarity says nothing about whether two images agree
                yield p
                continue
            if near is not None:
                kept = near.add(p.id, mask(toks) if s.mask_numbers else toks)
                if kept is not None:
                    absorb(p.id, kept, "near_duplicate")
                    continue
            yield p

    def embedding_stage(source: Iterator[Problem]) -> Iterator[Problem]:
        assert emb is not None
        batch: list[Problem] = []
        for p in source:
            batch.append(p)
            if len(batch) >= emb.batch:
                yield from _embed_batch(batch)
                batch = []
        yield from _embed_batch(batch)

    def _embed_batch(batch: list[Problem]) -> Iterator[Problem]:
        if not batch:
            return
        assert emb is not None
        yield from (p for p in batch if p.images)
        batch = [p for p in batch if not p.images]
        if not batch:
            return
        for p, kept in zip(batch, emb.add_batch([p.id for p in batch], [_text(p, s.include_answer) for p in batch])):
            if kept is None:
                yield p
            else:
                absorb(p.id, kept, "embedding_duplicate")

    survivors = text_stage()
    if emb is not None:
        survivors = embedding_stage(survivors)
    with tempfile.TemporaryDirectory(prefix="r1lab-dedup-") as tmp:
        spool = Path(tmp) / "kept.jsonl"
        with spool.open("w", encoding="utf-8") as f:
            for p in survivors:
                f.write(json.dumps(p.to_dict(), ensure_ascii=False) + "\n")
        # a kept row absorbed later (embedding stage) hands its own absorbed ids to its keeper
        for kept_id in list(absorbed):
            ids = absorbed.get(kept_id, [])
            for rid in ids:  # grows while it is read, so chains resolve too
                if rid in absorbed and rid != kept_id:
                    ids.extend(absorbed.pop(rid))
        with spool.open("r", encoding="utf-8") as f:
            for line in f:
                p = Problem(**json.loads(line))
                if p.id in absorbed:
                    p.metadata["absorbed"] = list(p.metadata.get("absorbed") or []) + absorbed[p.id]
                yield p
