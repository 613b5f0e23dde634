"""tune_study.tuning.tracking's pieces and the study key ``tracking`` (the end-to-end run is in test_callbacks)."""
from __future__ import annotations

import importlib.util
import json
import math

import pytest

from tune_study.config import load_space
from tune_study.errors import StudyError

pytest.importorskip("mlflow")
from tune_study.tuning.tracking import evaluations, metric_point, result_metrics, tracking_uri  # noqa: E402

BASE = "axes: {model: [tiny-bert], batch_size: [8]}\n"


def test_tracking_uri(tmp_path):
    assert tracking_uri("auto", tmp_path / "study") == f"sqlite:///{(tmp_path / 'study').resolve()}/mlflow.db"
    db = tmp_path / "elsewhere" / "deeper" / "runs.db"
    assert tracking_uri(f"sqlite:///{db}", tmp_path) == f"sqlite:///{db}"
    assert db.parent.is_dir() and not db.exists()   # the folder, for SQLite to create the file in
    assert tracking_uri("http://127.0.0.1:5000", tmp_path) == "http://127.0.0.1:5000"


def test_metric_point_steps_by_samples_seen():
    result = {"epoch": 2, "samples_seen": 480, "val_acc": 0.7, "test_acc": 0.65, "lr": 1e-3,
              "epoch_end": True, "device": "cpu", "best_model_path": "/x", "val_loss": math.nan,
              "config": {"lr": 1e-3}, "trial_id": "abc", "training_iteration": 2, "evals": "[]", "replayed": True}
    assert metric_point(result) == (480, {"epoch": 2, "samples_seen": 480, "val_acc": 0.7, "test_acc": 0.65,
                                          "lr": 1e-3})
    assert metric_point({"val_acc": 0.5}) is None   # no step without samples seen


def test_result_metrics_hold_every_evaluation():
    evals = [{"epoch": 1.5, "epoch_end": False, "samples_seen": 360, "val_acc": 0.6, "val_loss": 0.69},
             {"epoch": 2, "epoch_end": True, "samples_seen": 480, "val_acc": 0.7, "val_loss": 0.6}]
    result = {**evals[-1], "test_acc": 0.65, "evals": json.dumps(evals)}
    got = {(m.key, m.step): m.value for m in result_metrics(result, 1000)}
    assert got[("val_acc", 360)] == 0.6 and got[("val_acc", 480)] == 0.7 and got[("epoch", 360)] == 1.5
    assert got[("test_acc", 480)] == 0.65 and ("test_acc", 360) not in got   # test only at the epoch's end
    assert {s for _, s in got} == {360, 480}


def test_evaluations_are_the_mid_epoch_ones():
    evals = [{"epoch": 1.5, "epoch_end": False, "samples_seen": 120, "val_acc": 0.6},
             {"epoch": 2, "epoch_end": True, "samples_seen": 240, "val_acc": 0.7}]
    assert evaluations({"evals": json.dumps(evals)}) == evals[:1]
    assert evaluations({"val_acc": 0.7}) == []


@pytest.mark.parametrize("value", ["results/mlflow.db", "42", "{}", "''"])
def test_bad_tracking_uri_is_one_line(tmp_path, value):
    f = tmp_path / "s.yaml"
    f.write_text(BASE + f"tracking: {{mlflow: {value}}}\n")
    with pytest.raises(StudyError) as e:
        load_space(f)
    msg = str(e.value)
    assert msg.startswith(f"{f}: key 'tracking.mlflow': expected 'auto' or an MLflow tracking URI") and "\n" not in msg


def test_tracking_without_mlflow_installed_is_refused(tmp_path, monkeypatch):
    f = tmp_path / "s.yaml"
    f.write_text(BASE + "tracking: {mlflow: auto}\n")
    assert load_space(f).tracking.mlflow == "auto"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(StudyError, match=r"key 'tracking.mlflow': needs the mlflow package: pip install -e"):
        load_space(f)
    f.write_text(BASE)   # no tracking: no mlflow needed
    assert load_space(f).tracking.mlflow is None


TELEMETRY = """
import os, sys
if sys.argv[1] == "ours":
    import tune_study.tuning.tracking
from mlflow.telemetry.utils import is_telemetry_disabled
print(os.environ.get("MLFLOW_DISABLE_TELEMETRY"), is_telemetry_disabled())
"""


@pytest.mark.parametrize("who, preset, expected", [
    ("plain", None, "None False"),      # the control: mlflow alone would send telemetry here
    ("ours", None, "true True"),
    ("ours", "false", "false False"),   # a user's explicit choice stands
])
def test_telemetry_off(who, preset, expected):
    import os
    import subprocess
    import sys
    from pathlib import Path

    # mlflow turns telemetry off by itself under pytest or CI: a clean environment shows what a user gets
    ci = ("PYTEST_CURRENT_TEST", "GITHUB_ACTIONS", "CI", "CIRCLECI", "GITLAB_CI", "JENKINS_URL", "TRAVIS", "TF_BUILD",
          "BITBUCKET_BUILD_NUMBER", "CODEBUILD_BUILD_ARN", "BUILDKITE", "TEAMCITY_VERSION", "CLOUD_RUN_EXECUTION",
          "RUNBOT_HOST_URL", "RUNBOT_BUILD_NAME", "RUNBOT_WORKER_ID", "DO_NOT_TRACK", "MLFLOW_DISABLE_TELEMETRY")
    env = {k: v for k, v in os.environ.items() if k not in ci}
    if preset is not None:
        env["MLFLOW_DISABLE_TELEMETRY"] = preset
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = str(root)
    r = subprocess.run([sys.executable, "-c", TELEMETRY, who], cwd=root, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == expected
