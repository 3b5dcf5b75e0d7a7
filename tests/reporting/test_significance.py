import numpy as np
import pytest
from scipy.stats import binomtest

from foldwise.reporting.significance import compare_paired, mcnemar_p


@pytest.mark.parametrize("b, c", [(0, 0), (0, 1), (3, 9), (12, 5), (40, 40), (101, 67), (600, 700)])
def test_mcnemar_exact_p_matches_scipys_two_sided_binomial_test(b, c):
    expected = 1.0 if b + c == 0 else binomtest(min(b, c), b + c, 0.5, alternative="two-sided").pvalue
    assert mcnemar_p(b, c) == pytest.approx(expected, rel=1e-9)


def test_paired_comparison_counts_only_the_disagreements_that_matter():
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    first = np.array([0, 1, 2, 1, 1, 0, 2, 0])  # wrong on 3, 5, 6, 7
    second = np.array([0, 1, 0, 0, 2, 2, 1, 0])  # wrong on 2, 4, 6, 7 (both wrong on 6, 7: not counted)
    out = compare_paired(labels, first, second)
    assert (out["only_first"], out["only_second"]) == (2, 2) and out["p_value"] == 1.0
    assert compare_paired(labels, labels, first)["only_first"] == 4
