"""Sample-based accuracy metrics (Chen et al. 2021 for pass@k)."""

from __future__ import annotations

from collections import Counter
from typing import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k), computed in
    the stable product form 1 - prod_{i=n-c+1..n} (1 - k/i).

    c = 0 gives 0 whatever k (no sample succeeded, so no estimate can credit one); k > n cannot be
    estimated from n samples and is an error rather than a silently wrong 1.0.
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got c={c}, n={n}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if c == 0:
        return 0.0
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def avg_at_k(correct: Sequence[bool], k: int | None = None) -> float:
    """Mean correctness of the first k samples (pass@1 estimated from k samples)."""
    xs = list(correct)[: k or len(correct)]
    return sum(map(bool, xs)) / len(xs) if xs else 0.0


def majority_at_k(answers: Sequence[str | None], correct: Sequence[bool], k: int | None = None) -> float:
    """maj@k / cons@k: 1.0 if the most frequent extracted answer among the first k samples is
    correct. Unparsable samples (None) do not vote; ties go to the answer that reached the count
    first, so the result is deterministic."""
    k = k or len(answers)
    votes: Counter[str] = Counter()
    first_seen: dict[str, int] = {}
    is_correct: dict[str, bool] = {}
    for i, (a, ok) in enumerate(zip(answers[:k], correct[:k])):
        if a is None:
            continue
        key = " ".join(str(a).split())
        votes[key] += 1
        first_seen.setdefault(key, i)
        is_correct[key] = is_correct.get(key, False) or bool(ok)
    if not votes:
        return 0.0
    best = max(votes, key=lambda a: (votes[a], -first_seen[a]))
    return 1.0 if is_correct[best] else 0.0
