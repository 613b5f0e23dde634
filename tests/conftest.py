"""Shared, generic test setup: offline Hugging Face libraries and a private tokenized-data cache.

Kept deliberately small so that other test modules (Ray, CLI, ...) can build on it.
"""
from __future__ import annotations

import os

import pytest

# Set before any test module imports transformers / datasets / huggingface_hub, which read these
# variables at import time: nothing in the suite may touch the network.
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: a longer test (e.g. real fine-tuning); still runs by default")


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Point TUNE_STUDY_CACHE at a per-session temporary directory (never ~/.cache)."""
    cache = tmp_path_factory.mktemp("tune_study_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNE_STUDY_CACHE", str(cache))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        yield cache


@pytest.fixture
def hub_models_available(monkeypatch):
    """Every hub model id counts as cached: for tests of study files that name hub models (the seed's
    bert-base-uncased / roberta-base), whose subject is the file, not this machine's hub access."""
    from tune_study import models

    monkeypatch.setattr(models, "hub_problem", lambda repo_id: None)
