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
        "markers", "slow: a longer test (a Ray Tune study end to end, real fine-tuning); still runs by "
        "default; `pytest -m 'not slow'` is the fast tier")


# The fast tier (`-m "not slow"`) is every test that needs no Ray cluster: config, data, the loop on
# tiny-bert, the report on synthetic exports. These fixtures and modules start Ray (or run whole
# studies), so their tests are slow wherever they are used.
SLOW_FIXTURES = {"ray_cluster", "smoke_study", "two_nodes", "tracked_smoke", "two_runs", "smoke_search"}
SLOW_MODULES = {"test_faults", "test_study", "test_cluster", "test_same_study", "test_callbacks"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(item.fixturenames) or item.module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


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
