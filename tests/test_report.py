"""The report: collapse detection, intervals, aggregation, report.md + figures + tables.

Most tests build synthetic trials/history parquet files and a space.yaml in a temporary folder (no
Ray, a few seconds). One module-scoped fixture runs the real smoke study through Ray (tiny-bert, 4
trials, ~1 min on 2 cores) for the end-to-end and interrupted-study tests.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tune_study import metrics as M
from tune_study import report as R

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "search_spaces" / "smoke.yaml"
N_TEST, N_TRAIN = 100, 240
FIGS = ("fig_curves_epoch.png", "fig_curves_steps.png", "fig_curves_samples.png", "fig_reliability.png")


# ----------------------------------------------------------------------------- synthetic studies

GRID_YAML = """\
name: {name}
description: synthetic study for the report tests
axes:
  model: [tiny-bert]
  batch_size: [8, 32]
  scheduler: [constant, linear]
{seed_axis}fixed:
  lr: 1.0e-3
  epochs: 3
  max_len: 64
  micro_batch_size: 8
  precision: fp32
  data:
    source: bundled
    max_examples: 300
early_stopping:
  grace_period: 1
  reduction_factor: 2
"""

SEARCH_YAML = """\
name: {name}
description: synthetic search
axes:
  model: [tiny-bert]
  lr: {{loguniform: [1.0e-5, 1.0e-3]}}
  batch_size: {{choice: [8, 32]}}
fixed:
  epochs: 3
  max_len: 64
  micro_batch_size: 8
  precision: fp32
  data:
    source: bundled
    max_examples: 300
num_samples: 6
"""


def _reliability(acc: float, conf: float) -> str:
    """Three bins holding N_TEST examples whose weighted accuracy / confidence are acc / conf."""
    counts = [20, 30, 50]
    offs = [-0.25, -0.05, 0.1]
    bins = []
    for (lo, hi), n, o in zip([(0.5333, 0.6), (0.8, 0.8667), (0.9333, 1.0)], counts, offs):
        bins.append([lo, hi, n, min(0.999, max(0.5, conf + o * 0.5)), min(1.0, max(0.0, acc + o))])
    return json.dumps(bins)


def make_study(root: Path, name: str = "syn", seeds=(0, 1, 2), search: bool = False,
               interrupted: bool = False) -> Path:
    """A study folder with space.yaml, trials.* and history.* as results.export writes them.

    Grid: tiny-bert x batch 8/32 x constant/linear (x seeds). Batch 8 learns (val acc rising to
    ~0.8), batch 32 less; trial (32, linear, last seed) collapses to 0.5 at epoch 3; (32, constant,
    seed 1) was stopped early after epoch 1.
    """
    d = root / name
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    if search:
        (d / "space.yaml").write_text(SEARCH_YAML.format(name=name))
        configs = [{"model": "tiny-bert", "lr": float(lr), "batch_size": int(b)}
                   for lr, b in zip(np.geomspace(1e-5, 1e-3, 6), [8, 32, 8, 32, 8, 32])]
    else:
        seed_axis = f"  seed: [{', '.join(map(str, seeds))}]\n" if len(seeds) > 1 else ""
        (d / "space.yaml").write_text(GRID_YAML.format(name=name, seed_axis=seed_axis))
        configs = [{"model": "tiny-bert", "batch_size": b, "scheduler": s, **({"seed": sd} if len(seeds) > 1 else {})}
                   for b in (8, 32) for s in ("constant", "linear") for sd in seeds]
    trials, hist = [], []
    for i, cfg in enumerate(configs):
        tid = f"abcde_{i:05d}"
        b = cfg["batch_size"]
        steps_per_epoch = math.ceil(N_TRAIN / b)
        top = 0.82 if b == 8 else 0.7
        if search:
            top = 0.6 + 0.25 * (math.log10(cfg["lr"]) + 5) / 2
        epochs = 3
        status = "TERMINATED"
        if not search and b == 32 and cfg["scheduler"] == "constant" and cfg.get("seed", 0) == 1:
            epochs = 1
        if interrupted and i >= len(configs) - 2:
            epochs, status = (1 if i == len(configs) - 2 else 0), ("RUNNING" if i == len(configs) - 2 else "PENDING")
        accs = [top - 0.12 + rng.normal(0, 0.01), top - 0.03 + rng.normal(0, 0.01), top + rng.normal(0, 0.01)]
        if not search and b == 32 and cfg["scheduler"] == "linear" and cfg.get("seed", 0) == seeds[-1]:
            accs[2] = 0.5  # the collapse
        best_e = int(np.argmax(accs[:max(epochs, 1)])) + 1
        conf = accs[best_e - 1] + (0.08 if cfg.get("scheduler") == "constant" else -0.05)
        test_acc = round(accs[best_e - 1] - 0.02, 2)
        for e in range(1, epochs + 1):
            hist.append({"trial_id": tid, **cfg, "epoch": e, "train_loss": 0.69 - 0.1 * e * (top - 0.5),
                         "val_loss": 0.69 - 0.2 * (accs[e - 1] - 0.5), "val_acc": accs[e - 1], "lr": 1e-3,
                         "optimizer_steps": e * steps_per_epoch, "samples_seen": e * N_TRAIN,
                         "samples_per_s": 100.0, "best_epoch": min(best_e, e), "best_val_acc": max(accs[:e]),
                         "test_acc": test_acc, "test_loss": 0.6, "test_ece": 0.05, "test_confidence": conf,
                         "test_reliability": _reliability(test_acc, conf)})
        done = epochs > 0
        trials.append({
            "trial_id": tid, **cfg, "status": status,
            "stopped_early": status == "TERMINATED" and epochs < 3, "epochs_run": epochs, "epochs_planned": 3,
            "optimizer_steps": epochs * steps_per_epoch, "samples_seen": epochs * N_TRAIN,
            "best_epoch": best_e if done else None, "best_val_acc": max(accs[:epochs]) if done else None,
            "best_val_loss": 0.5 if done else None, "test_acc": test_acc if done else None,
            "test_loss": (0.45 + 0.4 * (1 - test_acc) + (0.05 if cfg.get("scheduler") == "constant" else 0)) if done else None,
            "test_nll": None, "test_ece": abs(conf - test_acc) if done else None,
            "test_confidence": conf if done else None,
            "test_reliability": _reliability(test_acc, conf) if done else "[]",
            "samples_per_s": 100.0, "wall_time_s": 10.0, "best_model_path": "", "micro_batch_size": 8,
            "accumulation_steps": b // 8, "error": "", "trial_path": str(d / "tune" / f"t{i}")})
    t, h = pd.DataFrame(trials), pd.DataFrame(hist)
    t["test_nll"] = t["test_loss"]
    for n, df in (("trials", t), ("history", h)):
        df.to_csv(d / f"{n}.csv", index=False)
        df.to_parquet(d / f"{n}.parquet", index=False)
    return d


# ----------------------------------------------------------------------------- metrics

def test_detect_collapse_after_learning():
    h = pd.DataFrame({"epoch": [1, 2, 3, 4], "val_acc": [0.78, 0.86, 0.51, 0.5],
                      "train_loss": [0.5, 0.3, 0.7, 0.69], "val_loss": [0.45, 0.35, 0.69, 0.69]})
    assert M.detect_collapse(h) == (True, 3)
    assert M.collapse_info(h)[2] == "collapsed"
    # rows out of order: same answer
    assert M.detect_collapse(h.iloc[::-1]) == (True, 3)


def test_detect_collapse_negative_and_recovery():
    h = [{"epoch": 1, "val_acc": 0.7}, {"epoch": 2, "val_acc": 0.8}, {"epoch": 3, "val_acc": 0.85}]
    assert M.detect_collapse(h) == (False, None)
    # a dip to chance that recovers by the last epoch is not a collapse
    h = [{"epoch": 1, "val_acc": 0.7}, {"epoch": 2, "val_acc": 0.5}, {"epoch": 3, "val_acc": 0.8}]
    assert M.detect_collapse(h) == (False, None)
    # just outside the margin
    assert M.detect_collapse([{"epoch": 1, "val_acc": 0.8}, {"epoch": 2, "val_acc": 0.53}]) == (False, None)
    assert M.detect_collapse([], 0.5) == (False, None)


def test_detect_collapse_non_finite_loss():
    h = pd.DataFrame({"epoch": [1, 2, 3], "val_acc": [0.8, 0.82, 0.81],
                      "train_loss": [0.4, float("nan"), 0.3], "val_loss": [0.4, 0.4, float("inf")]})
    assert M.detect_collapse(h) == (True, 2)
    assert M.collapse_info(h)[2] == "non_finite"


def test_detect_collapse_never_learned_and_majority_rate():
    h = [{"epoch": 1, "val_acc": 0.5}, {"epoch": 2, "val_acc": 0.49}]
    assert M.collapse_info(h) == (True, 1, "never_learned")
    # an unbalanced val split: predicting the majority class scores 0.6
    h = [{"epoch": 1, "val_acc": 0.75}, {"epoch": 2, "val_acc": 0.6}]
    assert M.detect_collapse(h, majority_rate=0.6) == (True, 2)
    assert M.detect_collapse(h, majority_rate=0.5) == (False, None)
    assert M.detect_collapse(h, majority_rate=0.5, margin=0.11) == (True, 2)


def test_wilson_and_newcombe_known_values():
    # Newcombe (1998): Wilson 81/263 -> 0.2553-0.3662; method 10 for 56/70 - 48/80 -> 0.0524-0.3339
    lo, hi = M.wilson_interval(81, 263)
    assert (round(lo, 4), round(hi, 4)) == (0.2553, 0.3662)
    d, lo, hi = M.diff_interval(56, 70, 48, 80)
    assert (round(d, 3), round(lo, 4), round(hi, 4)) == (0.2, 0.0524, 0.3339)
    assert all(math.isnan(x) for x in M.wilson_interval(0, 0))
    lo, hi = M.wilson_interval(0, 10)
    assert lo == 0.0 and 0 < hi < 0.35


def test_welch_known_value():
    # t = (2 - 3) / sqrt(1/3 + 1/3) = -1.2247, df = 4 -> p = 0.2879
    assert M.welch_t_test([1, 2, 3], [2, 3, 4]) == pytest.approx(0.2879, abs=1e-4)
    assert math.isnan(M.welch_t_test([1], [2, 3]))
    assert M.welch_t_test([1, 1], [1, 1]) == 1.0


def test_interp_at():
    assert M.interp_at([0, 10, 20], [0.5, 0.7, 0.9], 15) == pytest.approx(0.8)
    assert math.isnan(M.interp_at([10, 20], [0.7, 0.9], 5))  # no extrapolation
    assert M.interp_at([1, 100], [0, 1], 10, log=True) == pytest.approx(0.5)


def test_aggregate_configs_known_numbers():
    t = pd.DataFrame({"trial_id": list("abcd"), "model": "m", "scheduler": "constant", "batch_size": [8, 8, 8, 32],
                      "seed": [0, 1, 2, 0], "test_acc": [0.80, 0.82, 0.84, 0.7], "test_loss": [0.5, 0.5, 0.5, 0.6],
                      "test_ece": 0.05, "test_confidence": 0.85, "best_val_acc": 0.8, "best_epoch": 2,
                      "stopped_early": False, "epochs_run": 3, "optimizer_steps": 90})
    c = R.aggregate_configs(t, ["model", "scheduler", "batch_size"], n_test=100).set_index("batch_size")
    # mean 0.82, sd 0.02, t(0.975, 2) = 4.3027 -> half-width 4.3027 * 0.02 / sqrt(3) = 0.04968
    assert c.loc[8, "n"] == 3 and c.loc[8, "test_acc"] == pytest.approx(0.82)
    assert c.loc[8, "test_acc_hw"] == pytest.approx(0.049683, abs=1e-5)
    assert c.loc[8, "ci_kind"] == "t"
    assert c.loc[8, "test_loss_hw"] == pytest.approx(0.0)
    # one seed: Wilson on n_test
    assert c.loc[32, "ci_kind"] == "wilson"
    assert (c.loc[32, "test_acc_lo"], c.loc[32, "test_acc_hi"]) == pytest.approx(M.wilson_interval(70, 100))
    d, how = R.differ(c.loc[8].to_dict(), c.loc[32].to_dict(), 100)
    assert d is True and "Newcombe" not in how and "difference" in how  # one side has one seed


# ----------------------------------------------------------------------------- reports from synthetic studies

def _check_outputs(study: Path, figs=FIGS):
    for f in ("report.md", "test_table.csv", *figs):
        assert (study / f).exists(), f
    for png in study.glob("*.png"):
        assert png.stat().st_size < 300_000, png
        assert png.read_bytes()[:4] == b"\x89PNG"


def test_report_with_seeds(tmp_path):
    study = make_study(tmp_path, seeds=(0, 1, 2))
    out = R.build_report(study, log=lambda *_: None)
    assert out == study / "report.md"
    _check_outputs(study, FIGS + ("fig_test_vs_batch.png", "test_table_by_config.csv"))
    text = out.read_text()
    for needle in ("## Findings", "(a)", "(b)", "(c)", "Welch", "mean ± 95% CI", "Best config",
                   "Batch-size ordering", "Early stopping (ASHA)", "collapsed after learning"):
        assert needle in text, needle
    # the collapse: (32, linear, seed 2) at epoch 3, in the dataframe, the CSV and the report
    trials = pd.read_parquet(study / "trials.parquet")
    assert {"collapsed", "collapse_epoch", "collapse_kind"} <= set(trials.columns)
    hit = trials[trials["collapsed"]]
    assert len(hit) == 1 and hit.iloc[0]["batch_size"] == 32 and hit.iloc[0]["scheduler"] == "linear"
    assert int(hit.iloc[0]["collapse_epoch"]) == 3 and hit.iloc[0]["collapse_kind"] == "collapsed"
    assert "collapsed" in pd.read_csv(study / "trials.csv").columns
    table = pd.read_csv(study / "test_table.csv")
    assert len(table) == 12 and table["collapsed"].sum() == 1
    assert {"best_epoch", "stopped_early", "test_loss", "test_acc"} <= set(table.columns)
    agg = pd.read_csv(study / "test_table_by_config.csv")
    assert len(agg) == 4 and set(agg["n"]) == {3}
    assert "tiny-bert · linear · b32" in text and "epoch 3" in text
    # a second run is idempotent (no duplicated columns)
    R.build_report(study, log=lambda *_: None, figures=False)
    assert list(pd.read_parquet(study / "trials.parquet").columns).count("collapsed") == 1


def test_report_single_seed_uses_binomial_noise(tmp_path):
    study = make_study(tmp_path, seeds=(0,))
    text = R.build_report(study, log=lambda *_: None).read_text()
    _check_outputs(study)
    assert "Wilson 95%" in text and "n_test = 100" in text
    assert not (study / "test_table_by_config.csv").exists()
    # (b): constant is over-confident with the higher loss in this synthetic study
    assert "over-confident" in text


def test_report_interrupted_partial_history(tmp_path):
    study = make_study(tmp_path, seeds=(0,), interrupted=True)
    text = R.build_report(study, log=lambda *_: None, figures=False).read_text()
    assert "Interrupted study" in text and "PENDING" in text
    table = pd.read_csv(study / "test_table.csv")
    assert len(table) == 4 and table["test_acc"].isna().sum() == 1


def test_report_search_study(tmp_path):
    study = make_study(tmp_path, search=True)
    text = R.build_report(study, log=lambda *_: None).read_text()
    _check_outputs(study, FIGS + ("fig_search_history.png",))
    assert "## Search" in text and "Best config per model" in text


def test_report_empty_study(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    shutil.copyfile(SMOKE, d / "space.yaml")
    text = R.build_report(d, log=lambda *_: None).read_text()
    assert "nothing to report" in text


def test_cli_bad_path(tmp_path, capsys):
    r = subprocess.run([sys.executable, "-m", "tune_study.report", str(tmp_path / "nope")], capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
    # a folder that is not a study
    assert R.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not a study folder" in err and len(err.strip().splitlines()) == 1


def test_cli_ok(tmp_path):
    study = make_study(tmp_path, seeds=(0,))
    assert R.main([str(study), "--no-figures"]) == 0
    assert (study / "report.md").exists()


# ----------------------------------------------------------------------------- the real smoke study (Ray)

@pytest.fixture(scope="module")
def smoke_study(tmp_path_factory):
    import ray

    from tune_study import grid

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        out = tmp_path_factory.mktemp("results")
        rc = grid.main(["--space", str(SMOKE), "--results-dir", str(out), "--no-report"])
    finally:
        ray.shutdown()
    assert rc == 0
    return out / "smoke"


def test_report_from_smoke_study(smoke_study):
    out = R.build_report(smoke_study, log=lambda *_: None)
    _check_outputs(smoke_study, FIGS + ("fig_test_vs_batch.png",))
    text = out.read_text()
    assert "n_test = 30" in text
    trials = pd.read_parquet(smoke_study / "trials.parquet")
    assert len(trials) == 4 and "collapsed" in trials.columns


def test_interrupted_study_rebuilds_exports(smoke_study, tmp_path):
    study = tmp_path / "smoke"
    shutil.copytree(smoke_study, study)
    for f in ("trials.csv", "trials.parquet", "history.csv", "history.parquet", "report.md"):
        (study / f).unlink(missing_ok=True)
    msgs = []
    out = R.build_report(study, log=msgs.append, figures=False)
    assert any("rebuilt" in m for m in msgs), msgs
    for f in ("trials.parquet", "history.parquet", "test_table.csv"):
        assert (study / f).exists()
    assert len(pd.read_parquet(study / "trials.parquet")) == 4
    assert len(pd.read_parquet(study / "history.parquet")) >= 4
    assert "rebuilt from the Ray experiment" in out.read_text()
    # exports older than the experiment are stale: rebuilt again
    old = (study / "tune").stat().st_mtime - 100
    for f in ("trials.parquet", "history.parquet"):
        os.utime(study / f, (old, old))
    msgs.clear()
    R.build_report(study, log=msgs.append, figures=False)
    assert any("stale" in m for m in msgs), msgs
