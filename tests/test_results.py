"""results: the tables built from hand-made ResultGrids and checkpoint folders (no Ray run)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tune_study import columns
from tune_study.config import validate_study
from tune_study.study_sections import Repeat
from tune_study.tuning import results
from tune_study.tuning.runner import repeat_points, top_configs

STUDY = validate_study({"name": "s", "axes": {"batch_size": [8, 32], "scheduler": ["constant"]},
                        "fixed": {"epochs": 2, "seed": 7}}, "grid")


@dataclass
class FakeResult:
    config: dict
    metrics: dict
    metrics_dataframe: pd.DataFrame | None = None
    checkpoint: object = None
    error: object = None
    path: str = "/x/tiny-bert_b8_constant_abcde_00000"
    extra: dict = field(default_factory=dict)


def _epoch(epoch, **kw):
    base = {"epoch": epoch, "train_loss": 0.7, "val_loss": 0.69, "val_acc": 0.5, "optimizer_steps": 10 * epoch,
            "samples_seen": 80 * epoch, "lr": 1e-3, "best_epoch": epoch, "best_val_acc": 0.5,
            "best_val_loss": 0.69, "test_acc": 0.4, "samples_per_s": 100.0, "trial_id": "abcde_00000"}
    return {**base, **kw}


def _checkpoint(tmp_path: Path, name: str, predictions: dict | None):
    from ray.tune import Checkpoint

    d = tmp_path / name
    d.mkdir()
    (d / "history.json").write_text("[]")
    if predictions is not None:
        (d / "predictions.json").write_text(json.dumps(predictions))
    return Checkpoint.from_directory(d)


def test_history_one_row_per_evaluation(tmp_path):
    evals1 = [{"epoch": 0.5, "epoch_end": False, "optimizer_steps": 5, "samples_seen": 40, "train_loss": 0.71,
               "val_loss": 0.70, "val_acc": 0.45},
              {"epoch": 1.0, "epoch_end": True, "optimizer_steps": 10, "samples_seen": 80, "train_loss": 0.7,
               "val_loss": 0.69, "val_acc": 0.5}]
    evals2 = [{**e, "epoch": e["epoch"] + 1, "optimizer_steps": e["optimizer_steps"] + 10} for e in evals1]
    df = pd.DataFrame([_epoch(1, evals=json.dumps(evals1)), _epoch(2, evals=json.dumps(evals2), optimizer_steps=20)])
    m = df.iloc[-1].to_dict()
    ckpt = _checkpoint(tmp_path, "ck", {"row": [3, 4], "label": [0, 1], "prob_pos": [0.2, 0.9]})
    r = FakeResult(config={"batch_size": 8, "scheduler": "constant", "seed": 7, "evals_per_epoch": 2},
                   metrics=m, metrics_dataframe=df, checkpoint=ckpt)
    trials, history = results.export([("grid", [r])], STUDY, tmp_path)
    assert list(history.epoch) == [0.5, 1.0, 1.5, 2.0]
    assert list(history.epoch_end) == [False, True, False, True]
    assert list(history.optimizer_steps) == [5, 10, 15, 20]
    assert history.val_acc.tolist() == [0.45, 0.5, 0.45, 0.5]
    # epoch-level metrics only on the epoch-end rows
    assert history.test_acc.isna().tolist() == [True, False, True, False]
    assert (history.batch_size == 8).all() and (history.stage == "grid").all()
    assert trials.loc[0, "evals_per_epoch"] == 2 and trials.loc[0, "seed"] == 7
    assert trials.loc[0, "stage"] == "grid"
    preds = pd.read_parquet(tmp_path / "predictions.parquet")
    assert list(preds.columns) == columns.PREDICTION_COLUMNS
    assert preds.prob_pos.tolist() == [0.2, 0.9] and (preds.trial_id == "abcde_00000").all()
    assert (tmp_path / "predictions.csv").exists()


def test_history_without_evals_is_one_row_per_epoch(tmp_path):
    df = pd.DataFrame([_epoch(1), _epoch(2)])
    r = FakeResult(config={"batch_size": 8, "scheduler": "constant"}, metrics=df.iloc[-1].to_dict(),
                   metrics_dataframe=df, checkpoint=_checkpoint(tmp_path, "ck", None))
    trials, history = results.export([("grid", [r])], STUDY.model_copy(update={"fixed": {"epochs": 2}}), tmp_path)
    assert list(history.epoch) == [1, 2] and history.epoch_end.all()
    assert trials.loc[0, "seed"] == 0 and trials.loc[0, "evals_per_epoch"] == 1  # training's defaults
    assert not (tmp_path / "predictions.parquet").exists()  # no trial stored predictions


def test_stages_in_one_table(tmp_path):
    def res(tid, seed):
        df = pd.DataFrame([_epoch(1, trial_id=tid)])
        return FakeResult(config={"batch_size": 8, "scheduler": "constant", "seed": seed},
                          metrics=df.iloc[-1].to_dict(), metrics_dataframe=df)

    trials, history = results.export([("grid", [res("a_00000", 7)]), ("repeat", [res("b_00000", 1), res("b_00001", 2)])],
                                     STUDY, tmp_path)
    assert trials.stage.tolist() == ["grid", "repeat", "repeat"]
    assert trials.seed.tolist() == [7, 1, 2]
    assert set(history.stage) == {"grid", "repeat"}
    assert pd.read_csv(tmp_path / "trials.csv").stage.tolist() == ["grid", "repeat", "repeat"]


def test_top_configs_by_val_never_by_test():
    def res(b, acc, loss, test, error=None):
        return FakeResult(config={"batch_size": b}, error=error,
                          metrics={"best_val_acc": acc, "best_val_loss": loss, "test_acc": test})

    grid = [res(8, 0.80, 0.50, 0.99), res(16, 0.90, 0.40, 0.10), res(32, 0.90, 0.30, 0.20),
            res(64, 0.95, 0.10, 0.99, error="boom"), res(128, None, None, None)]
    assert [c["batch_size"] for c in top_configs(grid, 2)] == [32, 16]   # tie on acc: lower loss first
    assert [c["batch_size"] for c in top_configs(grid, 5)] == [32, 16, 8]  # errored / unreported left out
    points = repeat_points(grid, Repeat(top=2, seeds=[1, 2]))
    assert [(p["batch_size"], p["seed"]) for p in points] == [(32, 1), (32, 2), (16, 1), (16, 2)]


def test_noise_scale_columns_reach_history_and_trials(tmp_path):
    """Each evaluation's gns_* estimates land on its history row; the epoch's B_simple on the epoch-end
    row; trials carry the first and the last epoch's B_simple from the last report."""
    gns = [{"gns_g2": 0.2, "gns_trace": 3.0, "gns_b_simple": 15.0, "gns_windows": 4},
           {"gns_g2": 0.1, "gns_trace": 4.0, "gns_b_simple": 40.0, "gns_windows": 5}]
    evals = [[{"epoch": e + j / 2, "epoch_end": j == 2, "optimizer_steps": 10 * e + 5 * j, "samples_seen": 0,
               "train_loss": 0.7, "val_loss": 0.69, "val_acc": 0.5, **gns[j - 1]} for j in (1, 2)] for e in (0, 1)]
    df = pd.DataFrame([_epoch(1, evals=json.dumps(evals[0]), gns_b_simple_epoch=23.3, gns_b_simple_first_epoch=23.3),
                       _epoch(2, evals=json.dumps(evals[1]), gns_b_simple_epoch=31.0, gns_b_simple_first_epoch=23.3)])
    r = FakeResult(config={"batch_size": 8, "scheduler": "constant", "evals_per_epoch": 2},
                   metrics=df.iloc[-1].to_dict(), metrics_dataframe=df, checkpoint=_checkpoint(tmp_path, "ck", None))
    trials, history = results.export([("grid", [r])], STUDY, tmp_path)
    assert set(columns.GNS_COLUMNS) <= set(history.columns)
    assert history.gns_b_simple.tolist() == [15.0, 40.0, 15.0, 40.0]
    assert history.gns_windows.tolist() == [4, 5, 4, 5]
    assert history.gns_b_simple_epoch.tolist()[1::2] == [23.3, 31.0]
    assert history.gns_b_simple_epoch.isna().tolist()[::2] == [True, True]
    assert (trials.loc[0, "gns_b_simple_first_epoch"], trials.loc[0, "gns_b_simple_epoch"]) == (23.3, 31.0)
