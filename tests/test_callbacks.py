"""The study's Tune callbacks end to end: the smoke study with ``tracking: {mlflow: auto}`` writes one
MLflow run per trial into a real SQLite store, read back and compared with trials.csv / history.csv,
and prints the progress line with its time left. Without ``tracking`` nothing imports mlflow."""
from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import ensure_local_ray

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "search_spaces" / "smoke.yaml"
LINE = re.compile(r"progress: (\d+)/(\d+) trials done, (\d+) running, (\d+) pending; (\d+)/(\d+) trial-epochs; "
                  r"elapsed (\d+):(\d\d):(\d\d)(?:; time left ~(\d+):(\d\d):(\d\d))?")


def _seconds(h, m, s) -> int:
    return int(h) * 3600 + int(m) * 60 + int(s)


@pytest.fixture(scope="module")
def tracked_smoke(tmp_path_factory):
    pytest.importorskip("mlflow")

    from tune_study import grid

    tmp = tmp_path_factory.mktemp("tracked")
    doc = yaml.safe_load(SMOKE.read_text())
    doc["tracking"] = {"mlflow": "auto"}
    doc["fixed"]["evals_per_epoch"] = 2   # mid-epoch evaluations are points of their own
    space = tmp / "smoke.yaml"
    space.write_text(yaml.safe_dump(doc))
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    before = os.environ.get("TUNE_STUDY_PROGRESS_S")
    os.environ["TUNE_STUDY_PROGRESS_S"] = "1"   # a line a second, not Tune's 30 s: the study lasts ~1 min
    ensure_local_ray()
    out = io.StringIO()
    try:
        t0 = time.monotonic()
        with contextlib.redirect_stdout(out):
            rc = grid.main(["--space", str(space), "--results-dir", str(tmp / "results"), "--no-report"])
        wall = time.monotonic() - t0
    finally:
        if before is None:
            os.environ.pop("TUNE_STUDY_PROGRESS_S", None)
        else:
            os.environ["TUNE_STUDY_PROGRESS_S"] = before
    return rc, tmp / "results" / "smoke", out.getvalue(), wall


def test_one_mlflow_run_per_trial_matching_the_exports(tracked_smoke):
    import mlflow
    from mlflow import MlflowClient

    rc, study_dir, _, _ = tracked_smoke
    assert rc == 0
    uri = f"sqlite:///{study_dir / 'mlflow.db'}"
    assert (study_dir / "mlflow.db").is_file()   # auto: a SQLite store in the study folder
    trials = pd.read_csv(study_dir / "trials.csv")
    history = pd.read_csv(study_dir / "history.csv")
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["smoke"])
    assert len(runs) == len(trials) == 4
    runs = runs.set_index("tags.trial_id").loc[trials.trial_id]
    assert list(runs["tags.mlflow.runName"]) == [Path(p).name for p in trials.trial_path]   # named like the trial
    assert (runs["status"] == "FINISHED").all()
    assert (runs["tags.stage"] == "grid").all() and (runs["tags.seed"] == "0").all()
    # the trial's config as params (nested keys as data/...)
    assert list(runs["params.batch_size"]) == [str(b) for b in trials.batch_size]
    assert list(runs["params.scheduler"]) == list(trials.scheduler)
    assert (runs["params.data/max_examples"] == "300").all()
    # the latest value of each metric is the trial's final one
    for col in ("best_val_acc", "test_acc", "test_loss", "samples_seen", "optimizer_steps"):
        assert list(runs[f"metrics.{col}"]) == pytest.approx(list(trials[col]), rel=1e-6), col
    assert list(runs["metrics.epoch"]) == list(trials.epochs_run)
    # every evaluation (two an epoch) is a point of val_acc, its step the samples seen
    client = MlflowClient(tracking_uri=uri)
    for trial_id, run_id in zip(trials.trial_id, runs["run_id"]):
        points = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "val_acc"))
        rows = history[history.trial_id == trial_id].sort_values("samples_seen")
        assert len(rows) == 2 * trials.set_index("trial_id").epochs_run[trial_id]
        assert [s for s, _ in points] == list(rows.samples_seen)
        assert [v for _, v in points] == pytest.approx(list(rows.val_acc))


def test_progress_lines_while_the_study_runs(tracked_smoke):
    rc, study_dir, output, wall = tracked_smoke
    trials = pd.read_csv(study_dir / "trials.csv")
    found = [m.groups() for m in LINE.finditer(output)]
    assert len(found) >= 3, output[-3000:]
    epochs = []
    for g in found:
        done, total, running, pending, e_done, e_planned = map(int, g[:6])
        assert total == 4 and done + running + pending == 4
        assert 0 <= e_done <= e_planned <= 8
        epochs.append(e_done)
        if g[9] is not None:
            # elapsed + time left is an estimate of the run's length: within a factor of 5 of the real one
            assert 0 <= _seconds(*g[6:9]) + _seconds(*g[9:12]) <= 5 * wall
    assert epochs == sorted(epochs)
    assert any(g[9] is not None and _seconds(*g[9:12]) > 0 for g in found)   # a real time left was shown
    last = [int(x) for x in found[-1][:6]]   # the end: every trial done, the epochs they ran
    assert last[:4] == [4, 4, 0, 0]
    assert last[4] == last[5] == trials.epochs_run.sum()


BLOCKED = """
import sys
sys.modules["mlflow"] = None   # any import of mlflow now raises ImportError
from tune_study.tuning.callbacks import study_callbacks
from tune_study.config import load_space
from tune_study.study_sections import Tracking
from tune_study import grid, report, search
from tune_study.tuning import runner as study
s = load_space("search_spaces/default.yaml")
cbs = study_callbacks(s, "grid", sys.argv[1])
print([type(c).__name__ for c in cbs], [m for m in sys.modules if "mlflow" in m and sys.modules[m] is not None])
s.tracking = Tracking.model_construct(mlflow="auto")   # as a file validated where mlflow is installed
try:
    study_callbacks(s, "grid", sys.argv[1])
except ImportError:
    print("tracked: ImportError")
"""


def test_default_study_needs_no_mlflow(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    r = subprocess.run([sys.executable, "-c", BLOCKED, str(tmp_path)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert lines[0] == "['StudyProgress', 'SettleFinishedTrials'] []"
    assert lines[1] == "tracked: ImportError"   # the control: with tracking the blocked mlflow is needed


def test_resume_of_a_tracked_study_adds_no_run(tracked_smoke):
    # Tuner.restore brings the callbacks back from the experiment's pickle (mlflow inside): the
    # finished study resumes, reruns nothing and records nothing new.
    import mlflow

    from tune_study import grid

    _, study_dir, _, _ = tracked_smoke
    rc = grid.main(["--space", str(study_dir / "space.yaml"), "--results-dir", str(study_dir.parent),
                    "--resume", "--no-report", "--num-cpus", "2"])
    assert rc == 0
    mlflow.set_tracking_uri(f"sqlite:///{study_dir / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["smoke"])
    assert len(runs) == 4 and (runs["status"] == "FINISHED").all()
