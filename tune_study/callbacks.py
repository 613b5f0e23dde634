"""The Tune callbacks of a study run: the progress line, and MLflow tracking when the study asks."""
from __future__ import annotations

from pathlib import Path

from .config import epochs_of
from .progress import StudyProgress


def study_callbacks(study: dict, stage: str, study_dir: str | Path) -> list:
    """The callbacks for one Tune run (``stage``: grid / search / repeat) of ``study``.
    mlflow is imported only here, and only for a study with ``tracking.mlflow``."""
    callbacks = [StudyProgress(epochs_default=epochs_of(study))]
    uri = (study.get("tracking") or {}).get("mlflow")
    if uri:
        from .tracking import mlflow_callback

        callbacks.append(mlflow_callback(uri, study, stage, study_dir))
    return callbacks
