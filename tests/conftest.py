"""Shared, generic test setup: offline Hugging Face libraries and a private tokenized-data cache.

Kept deliberately small so that other test modules (Ray, CLI, ...) can build on it.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

SMOKE = Path(__file__).resolve().parents[1] / "search_spaces" / "smoke.yaml"

# Set before any test module imports transformers / datasets / huggingface_hub, which read these
# variables at import time: nothing in the suite may touch the network.
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Pytest workers (the README's -n 2) share the cores: one torch thread per core each, not torch's
# default of every core in every worker, whose OpenMP threads then spin-wait on one another. Set
# before torch is imported here or in a test's subprocess (drivers, benchmarks inherit it). The fast
# tier in two workers took 2 min 19 s and 1 min 46 s with torch's default, 1 min 37 s and 1 min 39 s
# so, on the 2-core Xeon.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))


# The fast tier (`-m "not slow"`) is every test that needs no Ray cluster: config, data, the loop on
# tiny-bert, the report on synthetic exports. These fixtures and modules start Ray (or run whole
# studies), so their tests are slow wherever they are used.
SLOW_FIXTURES = {"ray_cluster", "local_ray", "smoke_study", "two_nodes", "tracked_smoke", "two_runs", "smoke_search"}
SLOW_MODULES = {"test_faults", "test_study", "test_cluster", "test_same_study", "test_callbacks"}


# The costliest modules first (seconds of one worker each, full suite, -n 2 on the 2-core Xeon:
# test_faults 166, test_gpu_check 139, test_study 117, test_same_study 68, test_search 59, then under
# 30 each). --dist loadfile hands whole files out in the order of the queue; xdist's own order (most
# tests first) queues the 3-test test_study behind files of many one-second tests, where a worker may
# start it when the other has nothing left to run.
COSTLIEST_FIRST = ["test_faults", "test_gpu_check", "test_study", "test_same_study", "test_search", "test_grid",
                   "test_training", "test_callbacks", "test_early_stopping", "test_cluster"]


def _module(item) -> str:
    return item.module.__name__.rsplit(".", 1)[-1]


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: a longer test (a Ray Tune study end to end, real fine-tuning); still runs by "
        "default; `pytest -m 'not slow'` is the fast tier")
    if hasattr(config.option, "loadscopereorder"):   # pytest-xdist: keep the order set below
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(item.fixturenames) or _module(item) in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
    rank = {name: i for i, name in enumerate(COSTLIEST_FIRST)}
    items.sort(key=lambda item: rank.get(_module(item), len(rank)))   # stable: the rest keep their order


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Point TUNE_STUDY_CACHE at a per-session temporary directory (never ~/.cache)."""
    cache = tmp_path_factory.mktemp("tune_study_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNE_STUDY_CACHE", str(cache))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        yield cache


# ----------------------------------------------------------------------------- Ray, started once

def ensure_local_ray() -> None:
    """A private local Ray of 2 CPUs in this process, started on first use and kept: starting one
    costs seconds of CPU, so the modules that need a plain one share it. A module that needs its own
    (test_faults: a worker hook; test_cluster: two nodes) shuts it down first and the next user
    starts it again. The last test's teardown shuts it down."""
    import ray

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False)


@pytest.fixture(scope="module")
def local_ray():
    ensure_local_ray()
    yield


@pytest.fixture(scope="session", autouse=True)
def _ray_down_at_the_end():
    yield
    import sys

    if "ray" in sys.modules:
        sys.modules["ray"].shutdown()


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory):
    """The smoke study (search_spaces/smoke.yaml) run once through ``python -m tune_study.grid``'s
    main, with its report: (exit code, study folder), for every test that reads a real study."""
    from tune_study import grid

    ensure_local_ray()
    out = tmp_path_factory.mktemp("smoke_results")
    rc = grid.main(["--space", str(SMOKE), "--results-dir", str(out)])
    return rc, out / "smoke"


@pytest.fixture
def hub_models_available(monkeypatch):
    """Every hub model id counts as cached: for tests of study files that name hub models (the seed's
    bert-base-uncased / roberta-base), whose subject is the file, not this machine's hub access."""
    from tune_study import models

    monkeypatch.setattr(models, "hub_problem", lambda repo_id: None)
