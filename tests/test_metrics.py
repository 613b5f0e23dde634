"""tune_study.metrics: expected calibration error and the t confidence interval, on hand-computed cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tune_study.metrics import calibration, t_interval


def test_ece_hand_computed_five_bins():
    # bins of width 0.2: (0,.2] (.2,.4] (.4,.6] (.6,.8] (.8,1]
    probs = torch.tensor([
        [0.95, 0.05],  # label 0: conf .95, correct   -> bin (.8, 1]
        [0.10, 0.90],  # label 0: conf .90, wrong     -> bin (.8, 1]
        [0.30, 0.70],  # label 1: conf .70, correct   -> bin (.6, .8]
        [0.65, 0.35],  # label 1: conf .65, wrong     -> bin (.6, .8]
        [0.45, 0.55],  # label 1: conf .55, correct   -> bin (.4, .6]
        [0.58, 0.42],  # label 0: conf .58, correct   -> bin (.4, .6]
    ], dtype=torch.float64)  # float64 so the hand numbers hold to 1e-12
    labels = torch.tensor([0, 0, 1, 1, 1, 0])
    out = calibration(probs, labels, n_bins=5)
    # bin (.4,.6]: conf (.55+.58)/2 = .565, acc 1.0 -> |1 - .565| = .435
    # bin (.6,.8]: conf (.70+.65)/2 = .675, acc 0.5 -> |.5 - .675| = .175
    # bin (.8, 1]: conf (.95+.90)/2 = .925, acc 0.5 -> |.5 - .925| = .425
    # ECE = 2/6 * (.435 + .175 + .425) = 1.035 / 3 = 0.345
    assert out["ece"] == pytest.approx(0.345, abs=1e-12)
    assert out["mean_confidence"] == pytest.approx(4.33 / 6, abs=1e-12)
    assert out["accuracy"] == pytest.approx(4 / 6, abs=1e-12)
    assert len(out["bins"]) == 3  # empty bins are not listed
    for got, want in zip(out["bins"], [(0.4, 0.6, 2, 0.565, 1.0), (0.6, 0.8, 2, 0.675, 0.5),
                                        (0.8, 1.0, 2, 0.925, 0.5)]):
        assert got[2] == want[2]
        assert got[0] == pytest.approx(want[0]) and got[1] == pytest.approx(want[1])
        assert got[3] == pytest.approx(want[3], abs=1e-12) and got[4] == pytest.approx(want[4], abs=1e-12)


def test_ece_perfectly_calibrated_is_zero():
    # four predictions at confidence .75, three of them right: acc == conf in the one bin
    probs = torch.tensor([[0.75, 0.25], [0.25, 0.75], [0.75, 0.25], [0.25, 0.75]])
    labels = torch.tensor([0, 1, 0, 0])
    out = calibration(probs, labels)
    assert out["ece"] == pytest.approx(0.0, abs=1e-12)
    assert out["accuracy"] == 0.75 and out["mean_confidence"] == pytest.approx(0.75)
    assert [b[2] for b in out["bins"]] == [4]


def test_ece_all_correct_overconfident_and_bin_edges():
    # all correct: ECE = 1 - mean confidence; conf exactly 1.0 lands in the last bin (closed on the right)
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.4], [0.3, 0.7]], dtype=torch.float32)
    labels = torch.tensor([0, 1, 0, 1])
    out = calibration(probs, labels, n_bins=10)
    mean_conf = (1.0 + 1.0 + 0.6 + 0.7) / 4
    assert out["ece"] == pytest.approx(1 - mean_conf, abs=1e-6)
    assert sum(b[2] for b in out["bins"]) == 4
    last = out["bins"][-1]
    assert last[1] == pytest.approx(1.0) and last[2] == 2 and last[3] == pytest.approx(1.0)


def test_ece_all_wrong():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    labels = torch.tensor([1, 0])
    out = calibration(probs, labels)
    assert out["accuracy"] == 0.0
    assert out["ece"] == pytest.approx((0.9 + 0.8) / 2, abs=1e-7)


def test_t_interval_known_numbers():
    mean, half, n = t_interval([1, 2, 3, 4, 5])
    # sd = sqrt(10/4) = 1.5811388; t_{0.975,4} = 2.7764451; 2.7764451 * 1.5811388 / sqrt(5) = 1.9632432
    assert (mean, n) == (3.0, 5)
    assert half == pytest.approx(1.963243, abs=1e-6)
    # 90%: t_{0.95,4} = 2.1318468 -> 1.5074433
    assert t_interval([1, 2, 3, 4, 5], confidence=0.90)[1] == pytest.approx(1.507443, abs=1e-6)


def test_t_interval_two_values_and_nans():
    # NaNs are dropped: [1, 3] -> mean 2, sd sqrt(2), t_{0.975,1} = 12.7062047 -> half = 12.7062047
    mean, half, n = t_interval([1.0, float("nan"), 3.0])
    assert (mean, n) == (2.0, 2)
    assert half == pytest.approx(12.706205, abs=1e-6)


def test_t_interval_degenerate():
    mean, half, n = t_interval([4.5])
    assert (mean, n) == (4.5, 1) and math.isnan(half)
    mean, half, n = t_interval([])
    assert n == 0 and math.isnan(mean) and math.isnan(half)
    assert t_interval([float("nan")])[2] == 0
    assert t_interval([2.0, 2.0, 2.0]) == (2.0, 0.0, 3)


def test_wilson_interval_known_numbers():
    from tune_study.metrics import wilson_interval

    # 75 of 100 at 95%, by hand: z = 1.959964, p = 0.75, centre = (p + z^2/200) / (1 + z^2/100) = 0.740752,
    # half = z * sqrt(p(1-p)/100 + z^2/40000) / (1 + z^2/100) = 0.083796 -> [0.656955, 0.824548]
    lo, hi = wilson_interval(75, 100)
    assert lo == pytest.approx(0.656955, abs=1e-6) and hi == pytest.approx(0.824548, abs=1e-6)
    assert wilson_interval(0.75 * 100, 100) == (lo, hi)            # acc * n, rounded
    lo0, hi0 = wilson_interval(0, 10)                                # 0 of 10: [0, z^2/(10 + z^2)]
    assert lo0 == pytest.approx(0.0, abs=1e-12) and hi0 == pytest.approx(1.959964 ** 2 / (10 + 1.959964 ** 2), abs=1e-6)
    assert all(math.isnan(v) for v in wilson_interval(3, 0))


# ----------------------------------------------------------------------------- paired tests, Holm, budget

from tune_study.metrics import (  # noqa: E402
    expected_max,
    holm,
    mcnemar_exact,
    nll_per_example,
    paired_bootstrap,
    paired_t_test,
    welch_t_test,
)


def test_mcnemar_exact_hand_computed():
    # A right / B wrong on 3 examples, the reverse on 1, 6 concordant: b=3, c=1
    a = [1, 1, 1, 0, 1, 1, 0, 0, 1, 1]
    b = [0, 0, 0, 1, 1, 1, 0, 0, 1, 1]
    bb, cc, p = mcnemar_exact(a, b)
    # two-sided exact binomial, n=4, k=3: P(X>=3)+P(X<=1) = (4+1+1+4)/16 = 0.625
    assert (bb, cc) == (3, 1) and p == pytest.approx(0.625)
    # 10 vs 0: 2 * 0.5**10
    bb, cc, p = mcnemar_exact([1] * 10 + [1] * 5, [0] * 10 + [1] * 5)
    assert (bb, cc) == (10, 0) and p == pytest.approx(2 / 1024)


def test_mcnemar_identical_answers_is_not_p_zero():
    bb, cc, p = mcnemar_exact([1, 0, 1], [1, 0, 1])
    assert (bb, cc) == (0, 0) and math.isnan(p)


def test_paired_bootstrap_constant_difference_and_repeatable():
    # every example differs by exactly 1: every resample's mean difference is 1
    d, lo, hi = paired_bootstrap([2.0] * 20, [1.0] * 20)
    assert (d, lo, hi) == (1.0, 1.0, 1.0)
    x = np.r_[np.ones(60), np.zeros(40)]
    y = np.r_[np.ones(50), np.zeros(50)]
    r1, r2 = paired_bootstrap(x, y, seed=3), paired_bootstrap(x, y, seed=3)
    assert r1 == r2 and r1[0] == pytest.approx(0.10)
    # 10 of 100 examples differ (+1 each): the interval of the mean is ~ 0.1 +- 1.96*sqrt(.1*.9/100)
    assert r1[1] == pytest.approx(0.04, abs=0.015) and r1[2] == pytest.approx(0.16, abs=0.015)
    assert all(math.isnan(v) for v in paired_bootstrap([1.0], [1.0, 2.0]))


def test_holm_hand_computed():
    # sorted p: .01 (x3 -> .03), .02 (x2 -> .04), .04 (x1 -> .04); input order kept
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    # monotone: .03*2 = .06 would be below the earlier .09, so it is raised to .09
    assert holm([0.03, 0.03, 0.4]) == pytest.approx([0.09, 0.09, 0.4])
    out = holm([float("nan"), 0.02])
    assert math.isnan(out[0]) and out[1] == pytest.approx(0.02)  # nan is not counted in m


def test_expected_max_hand_computed():
    # v = [0.6, 0.8]: n=1 -> mean 0.7; n=2 -> 0.6*(1/4) + 0.8*(1 - 1/4) = 0.75
    assert expected_max([0.8, 0.6]) == pytest.approx([0.7, 0.75])
    # three values, n=2: .5*(1/9) + .7*(4/9-1/9) + .9*(1-4/9) = (.5 + 2.1 + 4.5)/9
    assert expected_max([0.5, 0.7, 0.9])[1] == pytest.approx(7.1 / 9)
    assert expected_max([]) == []


def test_welch_undefined_for_constant_groups():
    # defect: both groups constant but different used to give p = 0
    assert math.isnan(welch_t_test([0.8, 0.8], [0.7, 0.7]))
    assert math.isnan(welch_t_test([0.8, 0.8], [0.8, 0.8]))
    assert welch_t_test([1, 2, 3], [2, 3, 4]) == pytest.approx(0.2879, abs=1e-4)


def test_nll_per_example_clipped():
    out = nll_per_example([0.9, 0.9, 1.0], [1, 0, 0])
    assert out[0] == pytest.approx(-math.log(0.9)) and out[1] == pytest.approx(-math.log(0.1))
    assert math.isfinite(out[2]) and out[2] == pytest.approx(-math.log(1e-7))


def test_paired_t_test_hand_computed():
    # d = 1, 2, 3, 4: mean 2.5, sd 1.291, t = 2.5 / (1.291 / 2) = 3.873 on 3 df -> two-sided p = 0.0305
    assert paired_t_test([1, 2, 3, 4], [0, 0, 0, 0]) == pytest.approx(0.03047, abs=1e-4)
    assert paired_t_test([2, 4, 6, 8], [1, 2, 3, 4]) == pytest.approx(0.03047, abs=1e-4)  # x - y again 1..4
    # no spread in the differences (identical answers, or one constant shift): undefined, not p = 0
    assert math.isnan(paired_t_test([0.3, 0.7], [0.3, 0.7])) and math.isnan(paired_t_test([2, 3], [1, 2]))
    assert math.isnan(paired_t_test([1.0], [0.0]))
