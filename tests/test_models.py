"""tune_study.models: every model a study names must resolve before anything runs.

The suite is offline (conftest sets HF_HUB_OFFLINE=1): a hub model counts only if its config.json
is in the local Hugging Face cache, which these tests point at a folder of their own.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import RepositoryNotFoundError

from tune_study import models
from tune_study.errors import StudyError

ROOT = Path(__file__).resolve().parents[1]
HINT = "use a local directory with config.json, or run once with network to fill the cache"


def fake_hub_cache(root: Path, repo_id: str, rev: str = "0123abcd") -> Path:
    """huggingface_hub's cache layout: models--org--name/{refs/main, snapshots/<rev>/config.json}."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(rev)
    snap = repo / "snapshots" / rev
    snap.mkdir(parents=True, exist_ok=True)
    (snap / "config.json").write_text('{"model_type": "bert"}')
    return root


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty local HF cache, and a fresh per-id availability cache around each test."""
    cache = tmp_path / "hf_hub"
    cache.mkdir()
    # huggingface_hub reads HF_HUB_CACHE once, at import: point its constant at the folder.
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    models.hub_problem.cache_clear()
    yield cache
    models.hub_problem.cache_clear()


def test_hub_model_not_cached_offline_is_study_error(hub_cache):
    with pytest.raises(StudyError) as ei:
        models.resolve("bert-base-uncased")
    msg = str(ei.value)
    assert msg == ("model: model 'bert-base-uncased' (google-bert/bert-base-uncased) is not available: "
                   "not in the local Hugging Face cache and the hub cannot be reached "
                   f"(HF_HUB_OFFLINE=1: only the local cache is used); {HINT}")
    assert ei.value.key == "model"
    with pytest.raises(StudyError, match="model 'org/tiny' is not available"):
        models.resolve("org/tiny")
    # the tokenizer comes from the same place, so it is refused the same way
    with pytest.raises(StudyError, match="bert-base-uncased"):
        models.tokenizer_id("bert-base-uncased")


def test_hub_model_in_local_cache_is_accepted(hub_cache):
    with pytest.raises(StudyError, match="not available"):  # negative control: empty cache
        models.resolve("org/tiny")
    models.hub_problem.cache_clear()
    fake_hub_cache(hub_cache, "org/tiny")
    fake_hub_cache(hub_cache, "google-bert/bert-base-uncased")
    assert models.resolve("org/tiny") == "org/tiny"
    assert models.resolve("bert-base-uncased") == "google-bert/bert-base-uncased"
    assert models.tokenizer_id("bert-base-uncased") == "google-bert/bert-base-uncased"


def test_hub_cache_found_through_the_environment(tmp_path):
    """HF_HUB_CACHE in a fresh process (as a user sets it) is the cache that counts."""
    cache = fake_hub_cache(tmp_path / "hf_hub", "org/tiny")
    code = "from tune_study.models import resolve; print(resolve('org/tiny'))"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "org/tiny"
    env["HF_HUB_CACHE"] = str(tmp_path / "empty")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "model 'org/tiny' is not available" in out.stderr


def test_availability_is_checked_once_per_id(hub_cache, monkeypatch):
    fake_hub_cache(hub_cache, "org/tiny")
    calls = []
    real = huggingface_hub.try_to_load_from_cache
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: calls.append(a) or real(*a, **k))
    for _ in range(5):
        assert models.resolve("org/tiny") == "org/tiny"
    assert calls == [("org/tiny", "config.json")]


def test_bundled_random_and_local_models_never_ask_the_hub(hub_cache, tmp_path, monkeypatch):
    def no_hub(*a, **k):
        raise AssertionError("hub asked about a model that needs no hub")
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", no_hub)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", no_hub)
    local = tmp_path / "my_model"
    local.mkdir()
    (local / "config.json").write_text("{}")
    assert models.resolve(str(local)) == str(local)
    assert Path(models.resolve("minilm"), "config.json").is_file()
    for name in models.RANDOM:
        assert models.resolve(name) == name
        assert models.tokenizer_id(name) == "minilm"
    (local / "config.json").unlink()
    with pytest.raises(StudyError, match="has no config.json"):
        models.resolve(str(local))


def test_unknown_model_still_lists_the_known_names(hub_cache):
    with pytest.raises(StudyError, match="unknown model 'gpt-17'; known: minilm, bert-base-uncased"):
        models.resolve("gpt-17")


@pytest.fixture
def online(hub_cache, monkeypatch):
    """The online path, with the hub's answer faked: no network in the suite."""
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    asked = []

    def answer(result):
        def model_info(self, repo_id, **kw):
            asked.append((repo_id, kw.get("timeout")))
            if isinstance(result, BaseException):
                raise result
            return result
        monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    return answer, asked


def _not_found():
    e = RepositoryNotFoundError.__new__(RepositoryNotFoundError)
    Exception.__init__(e, "404 Client Error: Repository Not Found")
    return e


def test_online_hub_answers(online):
    answer, asked = online
    answer(object())
    assert models.resolve("org/exists") == "org/exists"
    assert asked == [("org/exists", 10)]  # a metadata call with a short timeout, no download

    answer(_not_found())
    with pytest.raises(StudyError, match="model 'org/typo' is not available: not found on the hub"):
        models.resolve("org/typo")

    answer(ConnectionError("[Errno -2] Name or service not known\nmore lines"))
    with pytest.raises(StudyError) as ei:
        models.resolve("roberta-base")
    assert str(ei.value) == (
        "model: model 'roberta-base' (FacebookAI/roberta-base) is not available: not in the local "
        "Hugging Face cache and the hub cannot be reached (ConnectionError: [Errno -2] Name or service "
        f"not known); {HINT}")


def test_online_cached_model_needs_no_hub_call(online, hub_cache):
    answer, asked = online
    answer(AssertionError("asked the hub although the model is cached"))
    fake_hub_cache(hub_cache, "org/tiny")
    assert models.resolve("org/tiny") == "org/tiny" and asked == []


# ----------------------------------------------------------------------------- CLIs, end to end

def _run(tmp_path, module, args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           # an empty HF cache: a machine that happens to hold bert-base-uncased changes nothing
           "HF_HUB_CACHE": str(tmp_path / "empty_hf_cache"), "TUNE_STUDY_CACHE": str(tmp_path / "tok")}
    t0 = time.time()
    out = subprocess.run([sys.executable, "-m", f"tune_study.{module}", *args], env=env,
                         capture_output=True, text=True, timeout=120)
    return out, time.time() - t0


def _assert_one_line_model_error(out, took, *expect):
    err = out.stderr.strip()
    assert out.returncode == 2, err[-2000:]
    assert len(err.splitlines()) == 1, err[-2000:]
    assert err.startswith("error: ")
    assert "is not available" in err and "HF_HUB_OFFLINE=1" in err and HINT in err
    for s in expect:
        assert s in err, (s, err)
    assert took < 30, took


@pytest.mark.parametrize("kind", ["grid", "search"])
def test_study_with_unavailable_hub_model_fails_before_writing(tmp_path, kind):
    space = tmp_path / "study.yaml"
    axes = ("  model: [minilm, bert-base-uncased]\n  batch_size: [8]\n" if kind == "grid" else
            "  model: {choice: [minilm, bert-base-uncased]}\n  lr: {loguniform: [1.0e-5, 1.0e-4]}\n")
    space.write_text(f"name: hubless\naxes:\n{axes}fixed:\n  epochs: 1\n  max_len: 32\n"
                     "  data: {source: bundled, max_examples: 100}\n")
    results = tmp_path / "results"
    out, took = _run(tmp_path, kind, ["--space", str(space), "--results-dir", str(results)])
    _assert_one_line_model_error(out, took, "study.yaml: key 'axes.model': model 'bert-base-uncased' "
                                            "(google-bert/bert-base-uncased) is not available")
    assert not results.exists()
    assert not (tmp_path / "tok").exists()  # not even tokenized


def test_train_with_unavailable_hub_model_fails_before_writing(tmp_path):
    out_dir = tmp_path / "out"
    out, took = _run(tmp_path, "train", ["--model", "bert-base-uncased", "--batch-size", "8",
                                         "--max-examples", "100", "--out", str(out_dir)])
    _assert_one_line_model_error(out, took, "model 'bert-base-uncased'")
    assert not out_dir.exists()


MINILM_OFFLINE = """
import os, socket
for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.pop(var, None)
tried = []
def refuse(self, address):
    tried.append(address)
    raise OSError("no network")
socket.socket.connect = refuse
from tune_study import models
models.load_model("minilm")
models.load_tokenizer("minilm")
print(tried, os.environ.get("HF_HUB_OFFLINE"))
"""


@pytest.mark.slow   # a fresh interpreter importing transformers: the full suite's, not the fast tier's
def test_the_bundled_model_loads_without_network_and_sets_nothing():
    """minilm is a local directory: loading it opens no connection, so nothing sets HF_HUB_OFFLINE
    (set in a worker process, it would make the next trial's hub model cache-only)."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}
    out = subprocess.run([sys.executable, "-c", MINILM_OFFLINE], env={**env, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[] None"
