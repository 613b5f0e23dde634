"""The Optuna follow-up search (tune_study.search) on the smoke search space (tiny-bert, CPU).

Without Ray: study-file validation, the conversion to Tune domains, the seeded sampler and
--from-grid's points. With Ray: the smoke search end to end (seeded from a fake grid study) and a
search killed mid-run and finished with --resume.
"""
from __future__ import annotations

import glob
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from driver_procs import kill_tree

from tune_study import search
from tune_study.errors import StudyError
from tune_study.search import load_search_space, make_searcher, points_from_grid, search_param_space, to_domain

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "search_spaces" / "followup_smoke.yaml"
FOLLOWUP = ROOT / "search_spaces" / "followup.yaml"


def _suggestions(study, n, points=None):
    """The first n configs the study's seeded searcher proposes, without Ray running anything."""
    s = make_searcher(study, points)
    s.set_search_properties(None, None, search_param_space(study))   # what Tune passes: no TuneConfig metric
    return [s.suggest(f"t{i}") for i in range(n)]


def _key(cfg, axes):
    return tuple(round(cfg[k], 12) if isinstance(cfg[k], float) else cfg[k] for k in axes)


def _in_space(value, spec) -> bool:
    if isinstance(spec, list):
        return value in spec
    kind, args = next(iter(spec.items()))
    if kind == "choice":
        return value in args
    lo, hi = args
    return lo <= value <= hi and (kind != "int" or float(value).is_integer())


# ----------------------------------------------------------------------------- the shipped files

def test_shipped_search_spaces(hub_models_available):
    f = load_search_space(FOLLOWUP)
    ax = f.axes
    assert set(ax["model"]) == {"bert-base-uncased", "roberta-base"}
    assert ax["lr"] == {"loguniform": [1e-5, 1e-4]}
    assert ax["warmup_ratio"] == {"uniform": [0.0, 0.2]}
    assert ax["scheduler"] == {"choice": ["constant", "linear", "cosine"]}
    assert ax["weight_decay"] == {"uniform": [0.0, 0.1]}
    assert ax["batch_size"] == {"choice": [16, 32, 64, 128, 256]}
    assert f.fixed["epochs"] == 5 and f.fixed["data"]["source"] == "hub"
    assert f.early_stopping.grace_period == 2
    assert f.num_samples >= 16 and isinstance(f.search_seed, int)
    text = FOLLOWUP.read_text()
    assert "RoBERTa could" in text and "grace_period 2" in text  # the seed's motivation; why grace 2

    s = load_search_space(SMOKE)
    assert s.axes["model"] == ["tiny-bert"] and 4 <= s.num_samples <= 6
    assert s.fixed["epochs"] == 2 and s.fixed["max_len"] == 64
    assert s.fixed["data"]["max_examples"] == 300 and s.fixed["micro_batch_size"] == "auto"
    assert s.resources.max_concurrent_trials == 2 and s.resources.cpus_per_trial == 1


def test_distributions_become_tune_domains():
    import optuna.distributions as od
    from ray.tune.search.optuna import OptunaSearch
    from ray.tune.search.sample import Categorical, Float, Integer

    lr = to_domain({"loguniform": [1e-5, 1e-4]})
    assert isinstance(lr, Float) and (lr.lower, lr.upper) == (1e-5, 1e-4)
    assert "LogUniform" in type(lr.get_sampler()).__name__
    u = to_domain({"uniform": [0, 0.2]})
    assert isinstance(u, Float) and (u.lower, u.upper) == (0.0, 0.2)
    assert type(u.get_sampler()).__name__.lstrip("_") == "Uniform"
    ep = to_domain({"int": [2, 5]})
    assert isinstance(ep, Integer) and (ep.lower, ep.upper) == (2, 6)  # randint: upper end exclusive
    c = to_domain({"choice": ["constant", "linear"]})
    assert isinstance(c, Categorical) and c.categories == ["constant", "linear"]
    assert isinstance(to_domain([16, 32]), Categorical)  # a plain list is a choice

    # and what Optuna makes of them: both ends of int included, log scale for lr
    ot = OptunaSearch.convert_search_space({"lr": lr, "epochs": ep, "batch_size": to_domain([16, 32])})
    assert ot["epochs"] == od.IntDistribution(2, 5)
    assert ot["lr"] == od.FloatDistribution(1e-5, 1e-4, log=True)
    assert ot["batch_size"] == od.CategoricalDistribution([16, 32])

    space = search_param_space(load_search_space(SMOKE))
    assert space["epochs"] == 2 and space["data"]["max_examples"] == 300  # fixed settings ride along


def test_sampler_is_seeded():
    study = load_search_space(SMOKE)
    a, b = _suggestions(study, 5), _suggestions(study, 5)
    assert a == b
    assert len({c["lr"] for c in a}) == 5
    for cfg in a:
        assert set(cfg) == set(study.axes)
        assert all(_in_space(cfg[k], spec) for k, spec in study.axes.items())
    assert _suggestions(study.model_copy(update={"search_seed": study.search_seed + 1}), 5) != a


def test_searcher_and_early_stopping_each_have_their_own_metric():
    """TPE maximises a trial's best val acc, early stopping each epoch's val acc; the Tuner names
    no metric, so Tune hands neither a metric that would replace its own."""
    from tune_study.search import SEARCH_METRIC
    from tune_study.tuning.early_stopping import make_scheduler

    study = load_search_space(SMOKE)
    searcher, asha = make_searcher(study), make_scheduler(study)
    assert searcher.set_search_properties(None, None, search_param_space(study))
    assert asha.set_search_properties(None, None)
    assert (searcher.metric, searcher.mode) == (SEARCH_METRIC, "max") == ("best_val_acc", "max")
    assert asha.metric == "val_acc"
    # a metric handed down (a TuneConfig metric) would have replaced the searcher's: that is why none is
    other = make_searcher(study)
    other.set_search_properties("val_acc", "max", search_param_space(study))
    assert other.metric == "val_acc"


# ----------------------------------------------------------------------------- validation

@pytest.mark.parametrize("body, key, words", [
    ("axes: {model: [tiny-bert], lr: {grid_search: [1.0e-3, 1.0e-4]}}\n", "axes.lr", "grid_search"),
    ("axes: {model: [tiny-bert], lr: {loguniform: [0, 1]}}\n", "axes.lr", "low > 0"),
    ("axes: {model: [tiny-bert], lr: {normal: [0.001, 0.0001]}}\n", "axes.lr", "loguniform"),
    ("axes: {model: [tiny-bert], lr: {loguniform: [1.0e-3]}}\n", "axes.lr", "[low, high]"),
    ("axes: {model: [tiny-bert], warmup_ratio: {uniform: [0.2, 0.1]}}\n", "axes.warmup_ratio", "below"),
    ("axes: {model: [tiny-bert], warmup_ratio: {uniform: [0.0, 1.0]}}\n", "axes.warmup_ratio", "[0, 1)"),
    ("axes: {model: [tiny-bert], batch_size: {uniform: [8, 32]}}\n", "axes.batch_size", "integer"),
    ("axes: {model: [tiny-bert], epochs: {int: [1, 2.5]}}\n", "axes.epochs", "integer bounds"),
    ("axes: {model: [tiny-bert], scheduler: {choice: [linear, linear]}}\n", "axes.scheduler", "repeated"),
    ("axes: {model: [tiny-bert], scheduler: {choice: [linear, step]}}\n", "axes.scheduler", "one of"),
    ("axes: {model: [tiny-bert], scheduler: {choice: []}}\n", "axes.scheduler", "non-empty"),
    ("axes: {model: [tiny-bert, no-such-model]}\n", "axes.model", "model"),
    ("axes: {model: [tiny-bert], max_len: {int: [32, 64]}}\n", "axes.max_len", "list or a choice"),
    ("axes: {model: [tiny-bert], bogus: {uniform: [0, 1]}}\n", "axes.bogus", "unknown key"),
    ("axes: {model: [tiny-bert]}\nfixed: {lr: {loguniform: [1.0e-5, 1.0e-4]}}\n", "fixed.lr", "number"),
    ("axes: {model: [tiny-bert]}\nnum_samples: 0\n", "num_samples", "integer >= 1"),
    ("axes: {model: [tiny-bert]}\nsearch_seed: lucky\n", "search_seed", "integer"),
    ("axes: {model: [tiny-bert]}\nnum_sample: 8\n", "num_sample", "unknown key"),
])
def test_search_yaml_validation_names_file_and_key(tmp_path, body, key, words):
    f = tmp_path / "bad.yaml"
    f.write_text("name: bad\n" + body)
    with pytest.raises(StudyError) as e:
        load_search_space(f)
    msg = str(e.value)
    assert str(f) in msg and f"'{key}'" in msg and words in msg and "\n" not in msg


@pytest.mark.parametrize("body, key", [
    ("axes: {model: [tiny-bert], lr: {grid_search: [1.0e-3, 1.0e-4]}}\n", "axes.lr"),
    ("axes: {model: [tiny-bert], lr: {loguniform: [0, 1]}}\n", "axes.lr"),
    ("axes: {model: [tiny-bert], lr: {normal: [0.001, 0.0001]}}\n", "axes.lr"),
    ("axes: {model: [tiny-bert], bogus: [1, 2]}\n", "axes.bogus"),
])
def test_bad_search_space_exits_2_before_any_write(tmp_path, capsys, body, key):
    f = tmp_path / "bad.yaml"
    f.write_text("name: bad\n" + body)
    rc = search.main(["--space", str(f), "--results-dir", str(tmp_path / "res")])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"'{key}'" in err and str(f) in err
    assert not (tmp_path / "res").exists()


def test_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit):
        search.main(["--help"])
    out = capsys.readouterr().out
    assert "python -m tune_study.search" in out and "OptunaSearch" in out
    for flag in ("--space", "--from-grid", "--results-dir", "--resume", "--address", "--dashboard-host",
                 "--dashboard-port", "--num-cpus", "--keep-alive", "--no-dashboard", "--no-report"):
        assert flag in out
    assert "followup.yaml" in out


# ----------------------------------------------------------------------------- --from-grid

def _fake_grid(d: Path, rows: list[dict], fixed: dict | None = None, fmt: str = "parquet") -> Path:
    d.mkdir(parents=True)
    df = pd.DataFrame(rows)
    if fmt == "parquet":
        df.to_parquet(d / "trials.parquet", index=False)
    else:
        df.to_csv(d / "trials.csv", index=False)
    if fixed is not None:
        (d / "space.yaml").write_text(yaml.safe_dump({"name": d.name, "axes": {"model": ["x"]}, "fixed": fixed}))
    return d


def _row(model, batch, sched, val, test=0.5, status="TERMINATED", **kw):
    return {"trial_id": f"{model[:4]}{batch}{sched[:3]}", "model": model, "batch_size": batch, "scheduler": sched,
            "status": status, "best_val_acc": val, "test_acc": test, **kw}


def test_from_grid_best_config_per_model(tmp_path, hub_models_available):
    study = load_search_space(FOLLOWUP)   # batch choice 16..256, lr loguniform [1e-5, 1e-4]
    grid = _fake_grid(tmp_path / "seed_study", [
        _row("bert-base-uncased", 16, "constant", 0.90, lr=5e-5),
        _row("bert-base-uncased", 64, "linear", 0.88, lr=5e-5),
        _row("bert-base-uncased", 256, "linear", 0.97, status="ERROR", lr=5e-5),   # errored: ignored
        _row("bert-base-uncased", 32, "linear", float("nan"), lr=5e-5),             # no result: ignored
        _row("roberta-base", 1024, "linear", 0.93, lr=5e-5),   # the best, but 1024 is not a choice here
        _row("roberta-base", 64, "linear", 0.91, lr=5e-5),     # -> the best that fits
        _row("roberta-base", 16, "constant", 0.89, lr=5e-5),
        _row("minilm", 16, "constant", 0.99, lr=5e-5),         # not a model of this search
    ], fixed={"lr": 5e-5, "warmup_ratio": 0.0, "epochs": 5})   # weight_decay: the training default
    notes = []
    points = points_from_grid(grid, study, log=notes.append)
    assert points == [
        {"model": "roberta-base", "lr": 5e-5, "warmup_ratio": 0.0, "scheduler": "linear",
         "weight_decay": 0.0, "batch_size": 64},
        {"model": "bert-base-uncased", "lr": 5e-5, "warmup_ratio": 0.0, "scheduler": "constant",
         "weight_decay": 0.0, "batch_size": 16},
    ]
    assert all(type(p["batch_size"]) is int and type(p["lr"]) is float for p in points)  # no numpy scalars
    text = "\n".join(notes)
    assert "batch_size=1024" in text and "minilm" in text
    # the trials table itself (a file path) works as well; same points
    assert points_from_grid(grid / "trials.parquet", study, log=notes.append) == points


def test_from_grid_csv_test_acc_and_out_of_range(tmp_path):
    study = load_search_space(SMOKE)   # lr loguniform [3e-4, 3e-3], batch choice 8/16/32
    rows = [{k: v for k, v in r.items() if k != "best_val_acc"} for r in (
        _row("tiny-bert", 8, "linear", 0, test=0.7, lr=1e-3, warmup_ratio=0.1, weight_decay=0.01),
        _row("tiny-bert", 16, "cosine", 0, test=0.8, lr=1e-5, warmup_ratio=0.0, weight_decay=0.0),  # lr out
    )]
    grid = _fake_grid(tmp_path / "g", rows, fmt="csv")   # no space.yaml: the table's columns only
    notes = []
    points = points_from_grid(grid, study, log=notes.append)
    assert points == [{"model": "tiny-bert", "lr": 1e-3, "warmup_ratio": 0.1, "scheduler": "linear",
                       "weight_decay": 0.01, "batch_size": 8}]
    assert any("lr=1e-05" in n for n in notes)
    # nothing fits -> no points (a note, not an error)
    grid2 = _fake_grid(tmp_path / "g2", rows[1:], fmt="csv")
    assert points_from_grid(grid2, study, log=notes.append) == []
    # a column the grid never recorded and no space.yaml to fill it -> no point
    grid3 = _fake_grid(tmp_path / "g3", [{k: v for k, v in rows[0].items() if k != "weight_decay"}], fmt="csv")
    assert points_from_grid(grid3, study, log=notes.append) == []


def test_from_grid_bad_path_exits_2_before_any_write(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notatable").mkdir()
    (tmp_path / "notatable" / "trials.parquet").write_text("not parquet")
    _fake_grid(tmp_path / "nomodel", [{"trial_id": "a", "best_val_acc": 0.5}])
    for bad, words in ((tmp_path / "missing", "does not exist"), (tmp_path / "empty", "no trials.parquet"),
                       (tmp_path / "notatable", "cannot read"), (tmp_path / "nomodel", "'model'")):
        rc = search.main(["--space", str(SMOKE), "--results-dir", str(tmp_path / "res"), "--from-grid", str(bad)])
        assert rc == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: --from-grid") and words in err
        assert not (tmp_path / "res").exists()


# ----------------------------------------------------------------------------- with Ray

@pytest.fixture(scope="module")
def ray_cluster(local_ray):
    yield


def test_resume_after_kill(ray_cluster, tmp_path, capsys):
    """Kill a search (and its Ray) at its first checkpoint; --resume finishes it: num_samples trials,
    all TERMINATED, and the restored searcher goes on where it was (the seeded configs, none twice)."""
    doc = yaml.safe_load(SMOKE.read_text())
    doc.update(name="resume_smoke", num_samples=3)
    space = tmp_path / "resume_smoke.yaml"
    space.write_text(yaml.safe_dump(doc))
    res = tmp_path / "res"
    log = open(tmp_path / "first_run.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tune_study.search", "--space", str(space), "--results-dir", str(res),
         "--num-cpus", "2", "--no-report", "--no-dashboard"],
        cwd=ROOT, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": "local"},
        stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    exp = res / "resume_smoke" / "tune"
    try:
        t0 = time.time()
        while not (glob.glob(str(exp / "*" / "checkpoint_000000")) and glob.glob(str(exp / "experiment_state-*.json"))):
            assert proc.poll() is None, f"the search ended before its first checkpoint: {(tmp_path / 'first_run.log').read_text()[-3000:]}"
            assert time.time() - t0 < 180, "no checkpoint within 180 s"
            time.sleep(0.2)
    finally:
        kill_tree(proc)
        log.close()
    assert not (res / "resume_smoke" / "trials.parquet").exists()  # it really was cut short

    capsys.readouterr()
    rc = search.main(["--space", str(space), "--results-dir", str(res), "--resume", "--no-report"])
    out = capsys.readouterr().out
    assert rc == 0
    assert f"resuming {exp}" in out
    trials = pd.read_parquet(res / "resume_smoke" / "trials.parquet")
    assert len(trials) == 3 and (trials.status == "TERMINATED").all()
    assert (trials.epochs_run >= 1).all()
    study = load_search_space(space)
    axes = list(study.axes)
    assert {_key(r, axes) for r in trials.to_dict("records")} == {_key(c, axes) for c in _suggestions(study, 3)}


@pytest.fixture(scope="module")
def smoke_search(ray_cluster, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("search")
    # a finished "grid" whose best fitting tiny-bert config the search evaluates first
    grid = _fake_grid(tmp / "grid_smoke", [
        _row("tiny-bert", 8, "linear", 0.6, lr=1e-3, warmup_ratio=0.0, weight_decay=0.0),
        _row("tiny-bert", 64, "constant", 0.7, lr=1e-3, warmup_ratio=0.0, weight_decay=0.0),  # batch 64: no
    ], fixed={"epochs": 2})
    t0 = time.time()
    rc = search.main(["--space", str(SMOKE), "--results-dir", str(tmp / "res"), "--from-grid", str(grid)])
    return rc, tmp / "res" / "followup_smoke", time.time() - t0


def test_smoke_search_end_to_end(smoke_search):
    rc, study_dir, wall = smoke_search
    assert rc == 0
    print(f"smoke search: {wall:.0f} s")
    for name in ("trials", "history"):
        assert (study_dir / f"{name}.csv").exists() and (study_dir / f"{name}.parquet").exists()
    assert (study_dir / "space.yaml").read_text() == SMOKE.read_text()
    study = load_search_space(SMOKE)
    trials = pd.read_parquet(study_dir / "trials.parquet")
    assert len(trials) == study.num_samples
    assert (trials.status == "TERMINATED").all()
    for k, spec in study.axes.items():
        assert all(_in_space(v, spec) for v in trials[k]), k
    assert trials.lr.nunique() == len(trials)          # sampled, not fixed
    n_train = 240
    for t in trials.itertuples():
        assert 1 <= t.epochs_run <= study.fixed["epochs"]
        assert t.optimizer_steps == t.epochs_run * math.ceil(n_train / t.batch_size)
        assert 0.0 <= t.best_val_acc <= 1.0 and 0.0 <= t.test_acc <= 1.0
    history = pd.read_parquet(study_dir / "history.parquet")
    assert len(history) == trials.epochs_run.sum()
    assert {"lr", "val_acc", "warmup_ratio", "weight_decay", "batch_size", "scheduler"} <= set(history.columns)

    # --from-grid: the best grid config that fits (batch 8, not 64) was run, and recorded
    point = {"model": "tiny-bert", "lr": 1e-3, "warmup_ratio": 0.0, "scheduler": "linear",
             "weight_decay": 0.0, "batch_size": 8}
    seeds = json.loads((study_dir / search.SEEDS_FILE).read_text())
    assert seeds["points"] == [point]
    axes = list(study.axes)
    configs = {_key(r, axes) for r in trials.to_dict("records")}
    assert _key(point, axes) in configs
    # deterministic given search_seed: exactly the configs the seeded searcher proposes on its own
    assert configs == {_key(c, axes) for c in _suggestions(study, study.num_samples, [point])}

    try:
        import tune_study.report  # noqa: F401
    except ImportError:
        return
    assert (study_dir / "report.md").exists()


def test_checkpoints_bounded(smoke_search):
    _, study_dir, _ = smoke_search
    for trial in (study_dir / "tune").iterdir():
        if trial.is_dir():
            assert len(list(trial.glob("checkpoint_*"))) <= 2


def test_existing_search_refused_and_untouched(smoke_search, capsys):
    _, study_dir, _ = smoke_search
    before = {p: p.stat().st_mtime_ns for p in study_dir.rglob("*") if p.is_file()}
    rc = search.main(["--space", str(SMOKE), "--results-dir", str(study_dir.parent)])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert "already exists" in err and "--resume" in err and len(err.splitlines()) == 1
    assert before == {p: p.stat().st_mtime_ns for p in study_dir.rglob("*") if p.is_file()}


def test_resume_finished_search_samples_no_more(smoke_search):
    _, study_dir, _ = smoke_search
    before = pd.read_parquet(study_dir / "history.parquet")
    rc = search.main(["--space", str(SMOKE), "--results-dir", str(study_dir.parent), "--resume", "--no-report"])
    assert rc == 0
    trials = pd.read_parquet(study_dir / "trials.parquet")
    assert len(trials) == load_search_space(SMOKE).num_samples   # num_samples is the total budget
    assert len(pd.read_parquet(study_dir / "history.parquet")) == len(before)  # nothing rerun
