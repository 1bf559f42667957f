"""Step-level Monte Carlo tree search and the process preference model's loss (rStar-Math: Guan et
al. 2025, "rStar-Math: Small LLMs Can Master Math Reasoning with Self-Evolved Deep Thinking": the UCT
selection rule with Q(s) = q(s) / N(s), terminal-guided back-propagation of the +1 / -1 outcome, and
the pairwise (Bradley-Terry) ranking loss of its PPM).

Pure functions of numbers (selection, back-up) and of tensors (the loss); the tree itself, the
policy and the sandbox live in r1lab.train.mcts.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F


def node_q(value_sum: float, visits: int, prior: float = 0.0, prior_weight: float = 0.0) -> float:
    """A node's value: the mean of the returns backed up through it, with the PPM's score of the
    node counted as `prior_weight` extra returns (rStar-Math initialises q(s) with the PPM once one
    exists). Q = (prior_weight * prior + value_sum) / (prior_weight + visits); 0 with neither."""
    denom = prior_weight + visits
    if denom <= 0:
        return 0.0
    return (prior_weight * prior + value_sum) / denom


def uct_score(q: float, visits: int, parent_visits: int, c: float) -> float:
    """UCT(s) = Q(s) + c * sqrt(ln N(parent) / N(s)); +inf for a child never visited, so every child
    of a node is tried once before any is tried twice."""
    if visits <= 0:
        return math.inf
    return q + c * math.sqrt(math.log(max(parent_visits, 1)) / visits)


def select_child(qs: Sequence[float], visits: Sequence[int], parent_visits: int, c: float,
                 priors: Sequence[float] | None = None) -> int:
    """Index of the child with the highest UCT score. Ties (unvisited children above all) go to
    the higher prior, then to the earlier child, so a search is reproducible."""
    if not qs:
        raise ValueError("select_child: the node has no children")
    priors = priors if priors is not None else [0.0] * len(qs)
    best, best_key = 0, None
    for i, (q, n, p) in enumerate(zip(qs, visits, priors)):
        key = (uct_score(q, n, parent_visits, c), p)
        if best_key is None or key > best_key:
            best, best_key = i, key
    return best


def backup(visits: Sequence[int], value_sums: Sequence[float], reward: float) -> tuple[list[int], list[float]]:
    """Back the terminal's reward up the path (root first, terminal last): each node on it gets one
    more visit and `reward` added to its return sum (no discount: the outcome is the only reward)."""
    if len(visits) != len(value_sums):
        raise ValueError(f"backup: {len(visits)} visit counts but {len(value_sums)} return sums")
    return [n + 1 for n in visits], [s + reward for s in value_sums]


def ppm_pairwise_loss(score_pos: torch.Tensor, score_neg: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry ranking loss of a process preference model, per pair: -log sigmoid(r(pos) - r(neg)).

    score_pos, score_neg: [B] scores of the preferred and the dispreferred partial solution of each
    pair (siblings after the same steps). Returns [B]; the caller averages over its batch.
    logsigmoid keeps large score gaps finite."""
    return -F.logsigmoid(score_pos - score_neg)
