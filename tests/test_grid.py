"""The grid study through Ray Tune, on the smoke study (tiny-bert, 4 trials, CPU)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from tune_study import grid
from tune_study.config import load_space
from tune_study.errors import StudyError

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "search_spaces" / "smoke.yaml"


def test_smoke_study_end_to_end(smoke_study):
    rc, study_dir = smoke_study
    assert rc == 0
    for name in ("trials", "history"):
        assert (study_dir / f"{name}.csv").exists() and (study_dir / f"{name}.parquet").exists()
    assert (study_dir / "space.yaml").exists()
    trials = pd.read_parquet(study_dir / "trials.parquet")
    study = load_space(SMOKE)
    # one row per grid point
    assert len(trials) == 4
    assert set(zip(trials.batch_size, trials.scheduler)) == {(8, "constant"), (8, "linear"),
                                                              (32, "constant"), (32, "linear")}
    assert (trials.status == "TERMINATED").all()
    n_train = 240  # 300 reviews split 8:1:1
    for t in trials.itertuples():
        assert 1 <= t.epochs_run <= study.fixed["epochs"]
        assert t.optimizer_steps == t.epochs_run * math.ceil(n_train / t.batch_size)
        assert t.samples_seen == t.epochs_run * n_train
        assert 1 <= t.best_epoch <= t.epochs_run
        assert 0.0 <= t.test_acc <= 1.0 and 0.0 <= t.best_val_acc <= 1.0
        assert 0.3 < t.test_loss < 3.0  # a 2-class cross-entropy near log 2 for an untrained model
        assert t.samples_per_s > 0 and t.wall_time_s > 0
        assert t.accumulation_steps == math.ceil(t.batch_size / t.micro_batch_size)
        assert t.stopped_early == (t.epochs_run < study.fixed["epochs"])
        best = Path(t.best_model_path)
        assert (best / "config.json").exists()
        # the saved best model is the reported one: ASHA stops every trial inside a report (early, or
        # at max_t in its last epoch), which never returns
        assert json.loads((best / "best_epoch.json").read_text())["epoch"] == t.best_epoch
        assert not (best.parent / "best_model.prev").exists() and not (best.parent / "best_model.tmp").exists()
        # keep_when_finished: best_model (the default): no training state left in a finished trial
        assert list(best.parent.glob("checkpoint_*")) and not list(best.parent.glob("checkpoint_*/state.pt"))
    history = pd.read_parquet(study_dir / "history.parquet")
    assert len(history) == trials.epochs_run.sum()
    assert {"train_loss", "val_loss", "val_acc", "lr", "optimizer_steps", "samples_seen"} <= set(history.columns)
    linear = history[history.scheduler == "linear"]
    full = linear[linear.epoch == study.fixed["epochs"]]
    assert (full.lr == 0).all()  # linear decay reaches 0 at the last optimizer step
    const = history[history.scheduler == "constant"]
    assert (const.lr == study.fixed["lr"]).all()


def test_checkpoints_bounded(smoke_study):
    _, study_dir = smoke_study
    for trial in (study_dir / "tune").iterdir():
        if trial.is_dir():
            assert len(list(trial.glob("checkpoint_*"))) <= 2


def test_existing_study_refused_and_untouched(smoke_study, capsys):
    _, study_dir = smoke_study
    # (driver.lock aside: every driver that takes the lock writes its name into it)
    before = {p: p.stat().st_mtime_ns for p in study_dir.rglob("*") if p.is_file() and p.name != "driver.lock"}
    rc = grid.main(["--space", str(SMOKE), "--results-dir", str(study_dir.parent)])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert "already exists" in err and "--resume" in err and len(err.splitlines()) == 1
    after = {p: p.stat().st_mtime_ns for p in study_dir.rglob("*") if p.is_file() and p.name != "driver.lock"}
    assert before == after


def test_resume_of_missing_study_refused(tmp_path, capsys):
    rc = grid.main(["--space", str(SMOKE), "--results-dir", str(tmp_path), "--resume"])
    assert rc == 2
    assert "no study" in capsys.readouterr().err
    assert not (tmp_path / "smoke").exists()


def test_resume_finished_study_reruns_nothing(smoke_study):
    _, study_dir = smoke_study
    before = pd.read_parquet(study_dir / "history.parquet")
    rc = grid.main(["--space", str(SMOKE), "--results-dir", str(study_dir.parent), "--resume", "--no-report"])
    assert rc == 0
    after = pd.read_parquet(study_dir / "history.parquet")
    assert len(after) == len(before)  # finished trials are not rerun


@pytest.mark.parametrize("body, key", [
    ("axes: {model: [tiny-bert], batch_size: [8]}\nfixed: {lr: 1.0e-3, bogus: 1}\n", "fixed.bogus"),
    ("axes: {model: [tiny-bert], batch_size: [8]}\nfixed: {lr: fast}\n", "fixed.lr"),
    ("axes: {model: [tiny-bert], batch_size: []}\n", "axes.batch_size"),
    ("axes: {model: [tiny-bert], batch_size: [8]}\nfixed: {epochs: 0}\n", "fixed.epochs"),
    ("axes: {model: [tiny-bert], batch_size: [0, 8]}\n", "axes.batch_size"),
    ("axes: {model: [nonexistent-model], batch_size: [8]}\n", "axes.model"),
    ("axes: {model: [tiny-bert], batch_size: [8]}\nearly_stopping: {grace: 1}\n", "early_stopping.grace"),
    ("axes: {model: [tiny-bert], batch_size: [8]}\nresources: {gpus: 1}\n", "resources.gpus"),
    ("axes: {model: [tiny-bert], batch_size: [4, 8]}\nfixed: {micro_batch_size: 8}\n", "fixed.micro_batch_size"),
    ("axes: {model: [tiny-bert], batch_size: [8]}\nfixed: {data: {source: nowhere}}\n", "fixed.data.source"),
    ("wat: 1\naxes: {model: [tiny-bert]}\n", "wat"),
])
def test_yaml_validation_names_file_and_key(tmp_path, body, key):
    f = tmp_path / "bad.yaml"
    f.write_text("name: bad\n" + body)
    with pytest.raises(StudyError) as e:
        load_space(f)
    msg = str(e.value)
    assert str(f) in msg and f"'{key}'" in msg and "\n" not in msg


def test_yaml_errors_exit_2_before_any_write(tmp_path, capsys):
    f = tmp_path / "bad.yaml"
    f.write_text("name: bad\naxes: {model: [tiny-bert], batch_size: []}\n")
    rc = grid.main(["--space", str(f), "--results-dir", str(tmp_path / "res")])
    assert rc == 2
    assert "axes.batch_size" in capsys.readouterr().err
    assert not (tmp_path / "res").exists()


def test_shipped_spaces_are_valid(hub_models_available):
    for f in (ROOT / "search_spaces").glob("*.yaml"):
        kind = "search" if "followup" in f.name else "grid"
        study = load_space(f, kind=kind)
        assert study.name
    seed = load_space(ROOT / "search_spaces" / "seed_study.yaml")
    assert seed.axes["batch_size"] == [16, 64, 256, 1024]
    assert set(seed.axes["model"]) == {"bert-base-uncased", "roberta-base"}
    assert seed.fixed["data"]["source"] == "hub" and seed.fixed["epochs"] == 5
    default = load_space(ROOT / "search_spaces" / "default.yaml")
    bs = default.axes["batch_size"]
    assert max(bs) / min(bs) == 64 and default.axes["model"] == ["minilm"]
    assert set(default.axes["scheduler"]) == {"constant", "linear"}


def test_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit):
        grid.main(["--help"])
    out = capsys.readouterr().out
    for flag in ("--space", "--results-dir", "--resume", "--address", "--dashboard-host", "--keep-alive",
                 "--no-dashboard"):
        assert flag in out


def test_keep_alive_needs_the_dashboard(capsys):
    """--keep-alive keeps the driver up for its dashboard: with --no-dashboard it is a usage error."""
    with pytest.raises(SystemExit) as e:
        grid.main(["--keep-alive", "--no-dashboard"])
    assert e.value.code == 2
    assert "--no-dashboard: not allowed with argument --keep-alive" in capsys.readouterr().err


def test_default_study_measures_every_adjacent_batch_comparison():
    # The report compares adjacent batch sizes only inside both curves' measured step ranges. Even a
    # trial ASHA stops at its first rung must reach the smaller batch's first evaluation in steps.
    from tune_study.data import load_reviews, split_reviews
    from tune_study.training.evaluation import eval_points

    study = load_space(ROOT / "search_spaces" / "default.yaml", kind="grid")
    fx, data = study.fixed, study.fixed["data"]
    n = len(split_reviews(load_reviews(data), data["split_seed"], data["max_examples"])["train"])
    k = fx["evals_per_epoch"]
    first_rung = study.early_stopping.grace_period if study.early_stopping else fx["epochs"]
    bs = sorted(study.axes["batch_size"])
    for small, large in zip(bs, bs[1:]):
        first_eval_small = min(eval_points(math.ceil(n / small), k))
        assert first_rung * math.ceil(n / large) >= first_eval_small, (small, large, n, k)
    # and the comparison is not trivial: one evaluation per epoch would leave b8 vs b32 without overlap
    assert min(eval_points(math.ceil(n / bs[0]), 1)) > first_rung * math.ceil(n / bs[1])
