"""Build data/cpt/math_text.jsonl, the vendored math-text corpus of the CPT recipes (deterministic).

    PYTHONPATH=src python data/cpt/make_corpus.py

Two kinds of documents, each a row {"id", "kind", "text"}:

- `worked`: worked arithmetic in prose, rendered from templates with a seeded random stream: one
  operation explained digit by digit (carrying, borrowing, splitting a number to multiply it), and
  chains of two or three operations evaluated from the inside out. No prompt format, no <think> tags.
- `gsm8k`: GSM8K *train* problems with their worked solutions as plain text (from data/gsm8k/
  train_r1.jsonl; the rows of dev_r1.jsonl, the real recipes' held-out set, are never used).

Decontamination (the counts are printed and written to PROVENANCE.md by hand):
- `worked` against the held-out arithmetic the tiny recipes evaluate on: every expression of the
  first 1000 held-out problems of difficulty 2 and 3 for data seeds 1234 (the recipes' default), 0
  and 1 is searched for in each document's text (with and without its outer parentheses); a
  document containing one is dropped. Single operations (a op b) are the building blocks of every
  problem, as a multiplication table is, and are not decontaminated.
- `gsm8k` with r1lab's own decontamination (r1lab.data.decontam: 8-gram coverage >= 0.7 after
  normalisation, exact matches, short items contained) against every vendored benchmark (GSM8K test,
  MATH500, AIME 2024/2025, AMC 2023) and against dev_r1.jsonl; a document that hits one is dropped.
  Then the whole corpus is checked once more against the vendored benchmarks the same way.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from r1lab.benchmarks import data_path, known_benchmarks
from r1lab.data.decontam import BenchmarkIndex
from r1lab.tasks import generate_splits

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
OUT = HERE / "math_text.jsonl"
SEED = 20261207
N_SINGLE, N_CHAIN, N_GSM8K = 1200, 1200, 400
NUMBER_WORDS = "zero one two three four five six seven eight nine".split()
OPS = {"+": ("add", "plus", "sum"), "-": ("subtract", "minus", "difference"), "*": ("multiply", "times", "product")}


def add_text(a: int, b: int) -> str:
    c = a + b
    if a >= 0 and a % 10 + b > 10:
        up = 10 - a % 10
        return (f"To add {b} to {a}, first make a ten: {a} + {up} = {a + up}. {b} is {up} + {b - up}, so "
                f"{a + up} + {b - up} = {c}. Therefore {a} + {b} = {c}.")
    return f"Adding {b} to {a}: the ones digit goes from {a % 10 if a >= 0 else a} up by {b}, and {a} + {b} = {c}."


def sub_text(a: int, b: int) -> str:
    c = a - b
    if a >= 10 and 0 < a % 10 < b:
        down = a % 10
        return (f"To subtract {b} from {a}, go down to the ten first: {a} - {down} = {a - down}. We still have to "
                f"take away {b - down}, and {a - down} - {b - down} = {c}. So {a} - {b} = {c}.")
    return f"Subtracting {b} from {a} leaves {c}, because {c} + {b} = {a}. So {a} - {b} = {c}."


def mul_text(a: int, b: int) -> str:
    c = a * b
    if abs(a) >= 10:
        tens, ones = (abs(a) // 10) * 10, abs(a) % 10
        sign = "-" if a < 0 else ""
        if ones:
            return (f"To multiply {a} by {b}, split {abs(a)} into {tens} and {ones}: {tens} * {b} = {tens * b} and "
                    f"{ones} * {b} = {ones * b}. Adding them, {tens * b} + {ones * b} = {abs(c)}. So {a} * {b} = {sign}{abs(c)}."
                    if not sign else
                    f"{a} * {b} is the negative of {abs(a)} * {b}. {tens} * {b} = {tens * b} and {ones} * {b} = {ones * b}, "
                    f"which make {abs(c)}. So {a} * {b} = {c}.")
        return f"{a} * {b}: {abs(a) // 10} * {b} = {abs(a) // 10 * b} tens, so {a} * {b} = {c}."
    return (f"{NUMBER_WORDS[a].capitalize() if 0 <= a <= 9 else a} times {NUMBER_WORDS[b]} is {c}: "
            f"{' + '.join([str(a)] * b)} = {c}. So {a} * {b} = {c}.")


def op_text(a: int, op: str, b: int) -> str:
    return {"+": add_text, "-": sub_text, "*": mul_text}[op](a, b)


def apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def step(rng: random.Random, value: int) -> tuple[str, int]:
    """An operation with an operand 1..9 whose result stays in [-20, 200], as the arithmetic family's."""
    while True:
        op, b = rng.choice("+-*"), rng.randint(1, 9)
        if -20 <= apply(value, op, b) <= 200 and (apply(value, op, b) >= 0 or rng.random() < 0.1):
            return op, b


def single(rng: random.Random) -> str:
    a = rng.choice([rng.randint(1, 9), rng.randint(10, 99), rng.randint(10, 120)])
    op, b = step(rng, a)
    return op_text(a, op, b)


def chain(rng: random.Random, ops: int) -> tuple[str, list[str]]:
    """A worked chain of `ops` operations and the expression after each operation."""
    value = rng.randint(1, 9)
    expr, lines, exprs = str(value), [], []
    for k in range(ops):
        op, b = step(rng, value)
        new = apply(value, op, b)
        lines.append((value, op, b, new))
        expr = f"{expr} {op} {b}"
        exprs.append(expr)
        if k < ops - 1:
            expr = f"({expr})"
        value = new
    parts = [f"We evaluate {expr} from the innermost parentheses outward."]
    for i, (a, op, b, c) in enumerate(lines):
        lead = ["First", "Next", "Then", "Finally"][min(i, 3) if i < len(lines) - 1 else 3]
        parts.append(f"{lead}, {a} {op} {b} = {c}." + (f" ({op_text(a, op, b)})" if rng.random() < 0.35 else ""))
    parts.append(f"The value of {expr} is {value}.")
    return " ".join(parts), exprs


def heldout_expressions() -> set[str]:
    found = set()
    for seed in (1234, 0, 1):
        for difficulty in (2, 3):
            _, held = generate_splits(["arithmetic"], 0, 1000, difficulty, seed)
            found.update(re.match(r"Compute (.+)\.$", p.prompt).group(1) for p in held)
    return found


def gsm8k_documents() -> list[dict]:
    rows = [json.loads(line) for line in (ROOT / "data" / "gsm8k" / "train_r1.jsonl").read_text().split("\n") if line.strip()]
    rng = random.Random(SEED + 1)
    rng.shuffle(rows)
    docs = []
    for r in rows[: N_GSM8K * 2]:
        question = r["prompt"].split("\nThink step by step")[0].strip()
        solution = re.search(r"<think>\n(.*)\n</think>", r["response"], re.S).group(1).strip()
        docs.append({"id": r["id"], "kind": "gsm8k", "question": question,
                     "text": f"Problem: {question}\nSolution: {solution}\nThe answer is {r['answer']}."})
    return docs


def main() -> None:
    rng = random.Random(SEED)
    held = heldout_expressions()
    docs, dropped_worked = [], 0
    seen = set()
    while sum(d["kind"] == "worked" and d["id"].startswith("single") for d in docs) < N_SINGLE:
        text = single(rng)
        if text not in seen:
            seen.add(text)
            docs.append({"id": f"single-{len(seen):05d}", "kind": "worked", "text": text})
    n_chain = 0
    while n_chain < N_CHAIN:
        text, _ = chain(rng, rng.choice([2, 2, 3]))
        if text in seen:
            continue
        seen.add(text)
        if any(h in text for h in held):  # a held-out problem's expression, alone or inside a longer chain
            dropped_worked += 1
            continue
        n_chain += 1
        docs.append({"id": f"chain-{n_chain:05d}", "kind": "worked", "text": text})
    worked = docs

    references = [str(data_path(b)) for b in known_benchmarks()]
    index = BenchmarkIndex.from_files(references + [str(ROOT / "data" / "gsm8k" / "dev_r1.jsonl")], 8)
    gsm, dropped_gsm = [], 0
    for d in gsm8k_documents():
        if index.match(d["id"], d["question"]) or index.match(d["id"], d["text"]):
            dropped_gsm += 1
            continue
        gsm.append({k: d[k] for k in ("id", "kind", "text")})
        if len(gsm) == N_GSM8K:
            break
    corpus = worked + gsm
    final = BenchmarkIndex.from_files(references, 8)
    hits = [d["id"] for d in corpus if final.match(d["id"], d["text"])]
    assert not hits, hits[:5]
    OUT.write_text("".join(json.dumps(d) + "\n" for d in corpus), encoding="utf-8")
    print(f"{len(worked)} worked documents ({dropped_worked} dropped: they held a held-out expression), "
          f"{len(gsm)} GSM8K train documents ({dropped_gsm} dropped by r1lab's decontamination); "
          f"{sum(len(d['text']) for d in corpus)} characters -> {OUT}")


if __name__ == "__main__":
    main()
