"""One study per command: the smoke study (early stopping on) run twice gives the same trials and
history, timing aside. Whether a trial waited for an earlier one (and was paused and restarted from
its checkpoint) may differ between the runs; what the study records must not.

On the smoke data every trial's val accuracy is the majority rate, so the cuts are made by the
val-loss tie-break; ASHA (which never stops a tie) would give the same study here too, so the
arrival-order test with ASHA as negative control is test_early_stopping's simulation."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from tune_study import grid
from tune_study.training.checkpoints import best_model_epoch

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "search_spaces" / "smoke.yaml"
KEYS = ["model", "batch_size", "scheduler", "seed"]
# what a run measures of its machine and its own execution, not what the study found
TIMING = {"trial_id", "trial_path", "node_id", "best_model_path", "samples_per_s", "wall_time_s", "epoch_train_s",
          "eval_s", "train_time_s", "time_this_iter_s", "time_total_s", "peak_mem_gib",
          "resumed_from_epoch",   # 1 where a trial was paused for an earlier trial's rung and restarted
          # which log a row came from: a result Tune dropped around a pause is read from the trial's
          # checkpoint instead (the same numbers; on a busy machine this happens)
          "from_checkpoint", "replayed"}


@pytest.fixture(scope="module")
def ray_cluster(local_ray):
    yield


def run_smoke(out: Path, space: Path = SMOKE) -> Path:
    assert grid.main(["--space", str(space), "--results-dir", str(out), "--no-report"]) == 0
    return out / yaml.safe_load(space.read_text())["name"]


@pytest.fixture(scope="module")
def two_runs(ray_cluster, smoke_study, tmp_path_factory):
    """The shared smoke study (its report aside) and the same command run again."""
    assert smoke_study[0] == 0
    return [smoke_study[1], run_smoke(tmp_path_factory.mktemp("run1"))]


def study_tables(study_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    trials = pd.read_parquet(study_dir / "trials.parquet")
    history = pd.read_parquet(study_dir / "history.parquet")
    t = trials.drop(columns=[c for c in trials if c in TIMING]).sort_values(KEYS).reset_index(drop=True)
    h = history.drop(columns=[c for c in history if c in TIMING]).sort_values([*KEYS, "epoch"]).reset_index(drop=True)
    return t, h


def test_two_runs_give_one_study(two_runs):
    (t1, h1), (t2, h2) = (study_tables(d) for d in two_runs)
    pd.testing.assert_frame_equal(t1, t2, check_exact=True)
    pd.testing.assert_frame_equal(h1, h2, check_exact=True)
    # early stopping acted: some trials were cut at epoch 1 and some ran both epochs
    assert set(t1["epochs_run"]) == {1, 2} and t1["stopped_early"].any()


def test_history_whole_after_pauses(two_runs):
    """Every trial's history has each of its epochs once, with its evaluations, whether or not it
    was paused and restarted."""
    for study_dir in two_runs:
        trials = pd.read_parquet(study_dir / "trials.parquet")
        history = pd.read_parquet(study_dir / "history.parquet")
        for t in trials.itertuples():
            h = history[history.trial_id == t.trial_id]
            ends = h[h.epoch_end]
            assert list(ends.epoch) == list(range(1, t.epochs_run + 1))
            assert len(h) == t.epochs_run * t.evals_per_epoch
            assert ends.optimizer_steps.is_monotonic_increasing


def test_best_model_of_every_trial(two_runs):
    """The best model on disk is the best-val epoch's, early-stopped trials included."""
    for study_dir in two_runs:
        for t in pd.read_parquet(study_dir / "trials.parquet").itertuples():
            assert (Path(t.best_model_path) / "config.json").exists(), t.best_model_path
            assert best_model_epoch(t.best_model_path) == t.best_epoch


def test_paused_trial_restarts_from_its_checkpoint_unchanged(ray_cluster, tmp_path):
    """Force a pause: trial 1 (micro-batch 8) reaches the rung at epoch 3 long before trial 0
    (micro-batch 1, 8x the passes), so it waits there for trial 0 and is restarted from its
    checkpoint (reduction_factor 1.5: 2 of 2 go on). Its history equals the same trial's without
    early stopping (no pause): every epoch once, the same numbers, and its best model is in place.
    (The rung is at epoch 3, not 1: a trial's first epoch also holds its start, whose time varied
    by 3.4 s under load, more than one epoch's lead; three epochs of the 8x passes make the pause sure.)"""
    doc = yaml.safe_load(SMOKE.read_text())
    doc["axes"] = {"model": ["tiny-bert"], "micro_batch_size": [1, 8]}
    doc["fixed"] = {k: v for k, v in doc["fixed"].items() if k != "micro_batch_size"} | {"batch_size": 8, "epochs": 4}
    dirs = {}
    for name, es in (("paused", {"grace_period": 3, "reduction_factor": 1.5}), ("nostop", "off")):
        space = tmp_path / f"{name}.yaml"
        space.write_text(yaml.safe_dump({**doc, "name": name, "early_stopping": es}))
        dirs[name] = run_smoke(tmp_path / name, space)
    hist = {k: pd.read_parquet(d / "history.parquet").sort_values(["micro_batch_size", "epoch"]) for k, d in dirs.items()}
    fast = hist["paused"][hist["paused"].micro_batch_size == 8]
    assert list(fast.epoch) == [1, 2, 3, 4] and list(fast.resumed_from_epoch) == [0, 0, 0, 3]   # paused, restarted
    assert (hist["nostop"].resumed_from_epoch == 0).all()
    keep = [c for c in hist["paused"] if c not in TIMING]
    pd.testing.assert_frame_equal(hist["paused"][keep].reset_index(drop=True),
                                  hist["nostop"][keep].reset_index(drop=True), check_exact=True)
    for t in pd.read_parquet(dirs["paused"] / "trials.parquet").itertuples():
        assert t.epochs_run == 4 and best_model_epoch(t.best_model_path) == t.best_epoch
