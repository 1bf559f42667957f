"""Evaluation: n samples per problem, verified with the same verifiers as training; unbiased
pass@k, avg@k, maj@k, lengths of correct and wrong answers, per-problem JSONL."""

from r1lab.eval.metrics import avg_at_k, majority_at_k, pass_at_k

__all__ = ["avg_at_k", "majority_at_k", "pass_at_k"]
