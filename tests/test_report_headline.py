"""The headline the driver prints at the end of a study: the same verdicts as report.md, and each
line flips with the data (best config, batch-size ordering, the noise scale's check)."""
from __future__ import annotations

from report_synth import N_TEST, correct_mask, curve, preds, trial, with_noise, write_study

from tune_study.report import build_report

BATCHES = (8, 32, 128)


def _headline(root, name, rights, ends=(40, 50, 60), noise=True, val=(0.9, 0.89, 0.88)):
    ts, h, ps = [], [], []
    for b, r, v in zip(BATCHES, rights, val):
        tid = f"t{b}"
        ts.append(trial(tid, batch_size=b, epochs_run=3, best_val_acc=v, test_acc=r / N_TEST))
        rows = curve(tid, b, lambda s, v=v: v, epochs=3)
        h += with_noise(rows, lambda t, ep, e=ends[len(ts) - 1]: e, [ts[-1]]) if noise else rows
        ps.append(preds(tid, correct_mask(r), 0.8))
    d = write_study(root, name, ts, history=h, predictions=ps)
    lines = []
    build_report(d, headline=lines, figures=False)
    return lines


def test_headline_best_config_and_interval(tmp_path):
    lines = _headline(tmp_path, "a", (140, 100, 100))
    assert lines[0].startswith("best config by val: minilm · constant · b8: val 0.900, test 0.933")
    assert "Wilson 95% [" in lines[0] and f"n_test {N_TEST}" in lines[0]
    # val says batch 128 is best instead: the headline follows val, never test
    flipped = _headline(tmp_path, "b", (140, 100, 100), val=(0.88, 0.89, 0.9))
    assert flipped[0].startswith("best config by val: minilm · constant · b128: val 0.900, test 0.667")


def test_headline_ordering_flips_with_the_data(tmp_path):
    beyond = _headline(tmp_path, "beyond", (140, 100, 100))
    order = next(x for x in beyond if x.startswith("batch sizes by test accuracy"))
    assert "8 > 32" in order and order.endswith("best vs worst: beyond noise")
    within = _headline(tmp_path, "within", (101, 100, 100))
    order = next(x for x in within if x.startswith("batch sizes by test accuracy"))
    assert "8 ≈ 32" in order and order.endswith("best vs worst: within noise")


def test_headline_noise_line(tmp_path):
    agree = _headline(tmp_path, "agree", (140, 140, 100))
    assert "noise scale, minilm · constant: B_noise 50 (median B_simple at the end); prediction agree" in agree
    dis = _headline(tmp_path, "dis", (100, 100, 140))
    assert "noise scale, minilm · constant: B_noise 50 (median B_simple at the end); prediction disagree" in dis
    none = _headline(tmp_path, "none", (140, 140, 100), noise=False)
    assert any(x.startswith("noise scale: not measured") for x in none)
