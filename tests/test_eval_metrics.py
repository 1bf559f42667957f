from math import comb

import pytest

from r1lab.eval.metrics import avg_at_k, majority_at_k, pass_at_k


@pytest.mark.parametrize("n,c,k", [(8, 3, 1), (8, 3, 4), (10, 1, 5), (16, 8, 8), (5, 5, 3), (20, 2, 10)])
def test_pass_at_k_matches_the_closed_form(n, c, k):
    closed = 1 - comb(n - c, k) / comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(closed, rel=1e-12)


def test_pass_at_1_is_the_fraction_correct():
    assert pass_at_k(8, 3, 1) == pytest.approx(3 / 8)


def test_pass_at_n_is_any_correct():
    assert pass_at_k(8, 1, 8) == 1.0
    assert pass_at_k(8, 0, 8) == 0.0


def test_no_correct_sample_is_zero_even_when_k_exceeds_n():
    # the classic bug: `if n - c < k: return 1.0` credits 4 wrong samples with pass@8 = 1
    assert pass_at_k(4, 0, 8) == 0.0


def test_k_larger_than_n_with_successes_cannot_be_estimated():
    with pytest.raises(ValueError, match="at least 8 samples"):
        pass_at_k(4, 1, 8)


def test_invalid_counts():
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 0)


def test_avg_at_k():
    assert avg_at_k([True, False, True, True]) == 0.75
    assert avg_at_k([True, False, True, True], k=2) == 0.5
    assert avg_at_k([]) == 0.0


def test_majority_vote():
    answers = ["12", "13", "12", None, "13", "12"]
    correct = [True, False, True, False, False, True]
    assert majority_at_k(answers, correct) == 1.0
    # the first two samples tie 1-1: the answer that got there first wins
    assert majority_at_k(answers, correct, k=2) == 1.0
    assert majority_at_k(["13", "12"], [False, True]) == 0.0
    # unparsable samples do not vote
    assert majority_at_k([None, None, "5"], [False, False, True]) == 1.0
    assert majority_at_k([None, None], [False, False]) == 0.0
    # whitespace differences are the same vote
    assert majority_at_k(["1 / 2", "1  /  2", "3"], [True, True, False]) == 1.0
