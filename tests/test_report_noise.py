"""The report's "why a batch size wins" section on synthetic studies whose data say opposite things:
every sentence it can conclude flips (the check: agree / disagree / undetermined; lr scaling:
closed / narrowed / no effect / made it worse / no gap), the trade-off numbers are computed by
hand, undefined B_simple stays undefined and a study without the columns gets one line."""
from __future__ import annotations

import math

import pytest
from report_synth import N_TEST, correct_mask, curve, flat_history, line, preds, report, trial, with_noise, write_study

from tune_study.report import build_report, load_study
from tune_study.report import lr_gap as G
from tune_study.report import noise as N
from tune_study.report.analysis import BEYOND, UNDETERMINED, WITHIN, Comparison

BATCHES = (8, 32, 128)


def _study(root, name, rights, ends=(40, 50, 60), firsts=None, epochs=(3, 3, 3), val=None, **kw):
    """Batches 8 / 32 / 128 of minilm · constant; ``rights``: test rows right (nested masks, so the
    discordant rows all go one way); ``ends`` / ``firsts``: each trial's B_simple at its end and
    after its first epoch; ``val``: val accuracy per trial (flat curves)."""
    firsts = firsts or ends
    ts, h, ps = [], [], []
    for i, (b, r, e) in enumerate(zip(BATCHES, rights, epochs)):
        tid = f"t{b}"
        ts.append(trial(tid, batch_size=b, epochs_run=e, best_val_acc=0.9 - 0.01 * i, test_acc=r / N_TEST))
        acc = val[i] if val else 0.8
        rows = curve(tid, b, lambda s, acc=acc: acc, epochs=e)
        h += with_noise(rows, lambda t, ep, i=i: firsts[i] if ep <= 1 else ends[i], [ts[-1]])
        ps.append(preds(tid, correct_mask(r), 0.8))
    return report(root, name, ts, history=h, predictions=ps, **kw)


# ----------------------------------------------------------------------------- the trade-off

def test_trade_off_by_hand():
    # B_noise 50: batch 8 -> 8/50 = 0.16, S/S_min = 1 + 50/8 = 7.25, E/E_min = 1.16
    assert N.trade_off(8, 50) == pytest.approx((0.16, 7.25, 1.16))
    assert N.trade_off(128, 50) == pytest.approx((2.56, 1.390625, 3.56))
    assert all(math.isnan(x) for x in N.trade_off(8, math.nan))
    # q = E/E_min(large) / E/E_min(small): 32 vs 128 at 50: 3.56 / 1.64 = 2.17 -> behind;
    # 8 vs 32: 1.64 / 1.16 = 1.41 -> no prediction; at B_noise 10,000: 1.0032 / 1.0008 -> level
    assert N.predict(32, 128, 50) == (pytest.approx(3.56 / 1.64), N.P_BEHIND)
    assert N.predict(8, 32, 50) == (pytest.approx(1.64 / 1.16), N.P_NONE)
    assert N.predict(8, 32, 10_000)[1] == N.P_LEVEL
    assert N.predict(8, 32, math.nan)[1] == N.P_NONE


def test_section_table_and_b_noise_median(tmp_path):
    text = _study(tmp_path, "s", (120, 120, 120), ends=(40, 50, 60), firsts=(4, 5, 6))
    assert "### Why a batch size wins: the gradient noise scale" in text
    # the median of the trials' end values 40 / 50 / 60; after the first epoch 4 / 5 / 6
    s = line(text, "- **B_noise** used below")
    assert "median over the 3 of 3 trial(s)" in s and "**50**" in s and "the median is 5)" in s
    assert "| minilm · constant · b8 | 3 | 4 | 40 | 150 |" in text   # 150 windows: one per step of epoch 3
    assert "| 8 | 0.16 | 7.25 | 1.16 |" in text and "| 32 | 0.64 | 2.56 | 1.64 |" in text
    assert "| 128 | 2.56 | 1.39 | 3.56 |" in text
    # the rule and the caveats are stated
    assert "**Prediction rule at equal epochs**" in text and "q ≥ 2" in text
    for caveat in ("overestimate the critical batch B_crit", "tr(HΣ)/GᵀHG", "defined for SGD", "AdamW",
                   "grows as the loss falls", "ratio of sums over the windows"):
        assert caveat in text, caveat


# ----------------------------------------------------------------------------- the check

def _pair(text, small, large):
    return line(text, f"  - batch {small} vs {large}: ")


def test_check_agree_flips_to_disagree_and_undetermined(tmp_path):
    # 32 vs 128 predicted behind at B_noise 50 (q = 2.17); measured: nested masks, 40 discordant
    agree = _study(tmp_path, "agree", (140, 140, 100))
    assert "q = 2.17 → predicted larger batch behind" in _pair(agree, 32, 128)
    assert _pair(agree, 32, 128).endswith("**agree**.") and "exact McNemar" in _pair(agree, 32, 128)
    assert "the measured ordering **agrees**" in line(agree, "**Check at equal epochs**")
    # the large batch ahead beyond noise instead: the prediction is refuted
    dis = _study(tmp_path, "disagree", (100, 100, 140))
    assert _pair(dis, 32, 128).endswith("**disagree**.")
    assert "the measured ordering **disagrees**" in line(dis, "**Check at equal epochs**")
    # within noise (51 vs 50 discordant): confirms neither
    und = _study(tmp_path, "undetermined", (101, 100, 100))
    assert "within noise" in _pair(und, 32, 128) and _pair(und, 32, 128).endswith("**undetermined**.")
    assert "**undetermined**: no adjacent pair confirms or refutes" in line(und, "**Check at equal epochs**")
    # 8 vs 32 makes no prediction (q = 1.41): even beyond noise it stays undetermined
    assert "q = 1.41 → no prediction (between 1.25 and 2)" in _pair(agree, 8, 32)
    assert _pair(_study(tmp_path, "np", (140, 100, 100)), 8, 32).endswith("**undetermined**.")


def test_check_level_prediction_flips(tmp_path):
    # B_noise 10,000: every batch well below it, predicted about level
    ends = (1e4, 1e4, 1e4)
    apart = _study(tmp_path, "apart", (140, 100, 100), ends=ends)
    assert "predicted about level" in _pair(apart, 8, 32) and _pair(apart, 8, 32).endswith("**disagree**.")
    level = _study(tmp_path, "level", (101, 100, 100), ends=ends)
    assert _pair(level, 8, 32).endswith("**undetermined**.")
    assert "**undetermined**" in line(level, "**Check at equal epochs**")


def test_check_at_equal_epochs_uses_val_where_epochs_differ(tmp_path):
    # batch 128 stopped after epoch 1: 32 vs 128 is compared on val at epoch 1, not on test
    far = _study(tmp_path, "valfar", (100, 100, 140), epochs=(3, 3, 1), val=(0.8, 0.9, 0.3))
    s = _pair(far, 32, 128)
    assert "val accuracy at epoch 1, the last epoch end both reached: 0.900 vs 0.300" in s
    assert "beyond noise (Newcombe 97.5% interval" in s and s.endswith("**agree**.")  # alpha split: 0.05 / 2
    assert "test accuracy, both ran 3 epoch(s)" in _pair(far, 8, 32)
    near = _study(tmp_path, "valnear", (100, 100, 140), epochs=(3, 3, 1), val=(0.8, 0.8, 0.78))
    assert "within noise" in _pair(near, 32, 128) and _pair(near, 32, 128).endswith("**undetermined**.")


def test_undefined_b_simple_is_never_a_number(tmp_path):
    text = _study(tmp_path, "undef", (140, 140, 100), ends=(math.nan,) * 3)
    assert "| minilm · constant · b8 | 3 | undefined | undefined |" in text
    assert "**B_noise** is undefined for minilm · constant: 0 of 3" in text and "nan" not in text.lower().split("## training")[0]
    assert "B_noise undefined → no prediction" in _pair(text, 32, 128) and _pair(text, 32, 128).endswith("**undetermined**.")
    # one trial undefined: the median is over the other two, and says so
    some = _study(tmp_path, "some", (120,) * 3, ends=(40, math.nan, 60))
    assert "median over the 2 of 3 trial(s)" in line(some, "**B_noise** used") and "**50**" in line(some, "**B_noise**")
    # two undefined: one of three is no majority, so no median (the undefined ones may be large)
    few = _study(tmp_path, "few", (120,) * 3, ends=(40, math.nan, math.nan))
    assert "**B_noise** is undefined for minilm · constant: 1 of 3 trial(s)" in few and "**B_noise** used" not in few
    assert N.majority_median([40.0, 60.0], 3) == 50.0 and math.isnan(N.majority_median([40.0], 2))


def test_missing_columns_one_line(tmp_path):
    ts = [trial("a"), trial("b", batch_size=32)]
    text = report(tmp_path, "old", ts)
    s = line(text, "**Gradient noise scale**")
    assert "not measured in this study, as its exports have no noise-scale columns (an older export)" in s
    assert "**Check at equal epochs**" not in text and "Prediction rule" not in text
    # the columns present, no window measured (noise_scale off)
    h = [dict(r, gns_g2=math.nan, gns_trace=math.nan, gns_b_simple=math.nan, gns_windows=0) for r in flat_history(ts)]
    off = report(tmp_path, "off", [dict(t, gns_b_simple_first_epoch=math.nan, gns_b_simple_epoch=math.nan) for t in ts],
                 history=h)
    assert "no window was measured (noise_scale off)" in line(off, "**Gradient noise scale**")
    assert "**B_noise**" not in off


def test_noise_figure_only_where_measured(tmp_path):
    ts = [trial(f"t{b}", batch_size=b) for b in BATCHES]
    h = with_noise(flat_history(ts), lambda t, ep: 20 * ep, ts)
    d = write_study(tmp_path, "fig", ts, h)
    text = build_report(d, log=lambda *_: None).read_text()
    assert (d / "fig_noise_scale.png").read_bytes()[:4] == b"\x89PNG" and "![noise scale](fig_noise_scale.png)" in text
    d2 = write_study(tmp_path, "nofig", ts)
    text2 = build_report(d2, log=lambda *_: None).read_text()
    assert not (d2 / "fig_noise_scale.png").exists() and "fig_noise_scale" not in text2


def test_trial_values_fall_back_to_history(tmp_path):
    ts = [trial("a", batch_size=8, epochs_run=2), trial("b", batch_size=32, epochs_run=2)]
    h = with_noise(flat_history(ts), lambda t, ep: 10.0 * ep)
    d = write_study(tmp_path, "hist_only", ts, h)
    st = load_study(d)
    assert "gns_b_simple_epoch" not in st.trials
    from tune_study.report.build import analyse

    sec = analyse(st).noise.sections[0]
    assert [(t.first, t.end, t.windows_end) for t in sec.trials] == [(10.0, 20.0, 150), (10.0, 20.0, 38)]


# ----------------------------------------------------------------------------- lr scaling

def _lr_study(root, name, right8, right_none, right_sqrt, offset_none=0):
    spec = [("a", 8, "none", right8, 5e-5, 0), ("b", 8, "sqrt", right8, 5e-5, 0),
            ("c", 128, "none", right_none, 5e-5, offset_none), ("d", 128, "sqrt", right_sqrt, 2e-4, 0)]
    ts = [trial(tid, batch_size=b, lr_scaling=rule, lr_peak=lr, beta2=0.999 ** (b / 8 if rule == "sqrt" else 1),
                test_acc=r / N_TEST) for tid, b, rule, r, lr, _ in spec]
    ps = [preds(tid, correct_mask(r, offset=o), 0.8) for tid, b, rule, r, lr, o in spec]
    text = report(root, name, ts, history=with_noise(flat_history(ts), 30.0, ts), predictions=ps,
                  axes=("model", "batch_size", "scheduler", "lr_scaling"))
    return text, line(text, "  - batch 128, lr_scaling sqrt")


def test_lr_scaling_verdicts_flip(tmp_path):
    text, s = _lr_study(tmp_path, "closed", 130, 90, 128)
    assert "**closed**" in s and "(lr_peak 0.0002, beta2 0.9841) vs none (lr_peak 5e-05, beta2 0.999)" in s
    assert "Holm over the family minilm · constant: 3 comparisons" in line(text, "close the large-batch gap?")
    assert "NLL, Holm-adjusted over the family's effects" in s and ": beyond noise)" in s.split("Gap to")[0]
    _, s = _lr_study(tmp_path, "narrowed", 140, 60, 100)
    assert "**narrowed but still beyond noise**" in s
    _, s = _lr_study(tmp_path, "none", 130, 90, 91)
    assert "**no measurable effect**" in s and ": within noise)" in s.split("Gap to")[0]  # NLL within noise too
    _, s = _lr_study(tmp_path, "worse", 130, 90, 50)
    assert "**made it worse**" in s
    _, s = _lr_study(tmp_path, "nogap", 100, 100, 140, offset_none=50)
    assert "**improved it, but there was no gap beyond noise to close**" in s
    # lr_scaling on the axis: the check runs per series
    assert "**Check at equal epochs** (lr_scaling=sqrt)" in text and "**Check at equal epochs** (lr_scaling=none)" in text
    assert "`lr_scaling` is not an axis" not in text


def test_lr_scaling_not_on_axis_says_so(tmp_path):
    text = _study(tmp_path, "plain", (120,) * 3)
    assert "`lr_scaling` is not an axis of this study" in text and "close the large-batch gap?" not in text


def test_lr_verdict_rule_directly():
    def c(verdict, diff):
        return Comparison("a", "b", 0, 0, "paired", verdict, diff=diff)
    b, w, u = BEYOND, WITHIN, UNDETERMINED
    assert G.verdict(c(b, 0.1), c(b, 0.2), c(w, 0.05)) == G.CLOSED
    assert G.verdict(c(b, 0.1), c(b, 0.2), c(b, -0.05)) == G.CLOSED       # overtook the small batch
    assert G.verdict(c(b, 0.1), c(b, 0.3), c(b, 0.2)) == G.NARROWED
    assert G.verdict(c(w, 0.1), c(b, 0.3), c(b, 0.2)) == G.NO_EFFECT
    assert G.verdict(c(b, -0.1), c(b, 0.3), c(b, 0.4)) == G.WORSE
    assert G.verdict(c(b, 0.1), c(w, 0.0), c(b, -0.1)) == G.NO_GAP
    assert G.verdict(c(u, 0.1), c(b, 0.3), c(b, 0.2)) == UNDETERMINED
    assert G.verdict(c(b, 0.1), c(u, 0.3), c(b, 0.2)) == UNDETERMINED


def test_check_rule_directly():
    def c(verdict, diff):
        return Comparison("a", "b", 0, 0, "paired", verdict, diff=diff)
    assert N.check(N.P_BEHIND, c(BEYOND, 0.1)) == N.AGREE
    assert N.check(N.P_BEHIND, c(BEYOND, -0.1)) == N.DISAGREE
    assert N.check(N.P_BEHIND, c(WITHIN, 0.1)) == UNDETERMINED
    assert N.check(N.P_LEVEL, c(BEYOND, 0.1)) == N.DISAGREE
    assert N.check(N.P_LEVEL, c(WITHIN, 0.0)) == UNDETERMINED
    assert N.check(N.P_NONE, c(BEYOND, 0.1)) == UNDETERMINED
    assert N.overall([N.AGREE, UNDETERMINED]) == N.AGREE
    assert N.overall([N.AGREE, N.DISAGREE]) == N.DISAGREE
    assert N.overall([UNDETERMINED]) == UNDETERMINED
