"""The Optuna follow-up search on Ray Tune: ``python -m tune_study.search [--space FILE] [--from-grid DIR] ...``.

Samples ``num_samples`` configs with OptunaSearch (TPE, seeded by the study file's ``search_seed``)
and stops weak ones with ASHA (the study's ``early_stopping``); ``max_concurrent_trials`` caps how
many run at once (TPE learns only from finished trials, so fewer at once means better-informed
samples). The study file is the grid's format, but an axis is a distribution:

  lr:           {loguniform: [1.0e-5, 1.0e-4]}   -> tune.loguniform
  warmup_ratio: {uniform: [0.0, 0.2]}           -> tune.uniform
  epochs:       {int: [2, 5]}                   -> tune.randint(2, 6), both ends included
  scheduler:    {choice: [constant, linear]}    -> tune.choice
  model:        [bert-base-uncased, roberta-base]   a plain list is a choice too

``grid_search`` cannot be used (OptunaSearch samples; it does not enumerate). ``--from-grid`` starts
the search from a finished grid study's best config per model (``points_to_evaluate``). Output and
``--resume`` as for the grid: <results-dir>/<study name>/ with the Ray experiment (tune/),
trials.csv/.parquet, history.csv/.parquet and the report. A resumed search restores the searcher
with the experiment (TPE's history and random state): it goes on sampling where it stopped, and
num_samples stays the total, trials already created included.
"""
from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path

from .config import TRAIN_DEFAULTS, Study, load_space, read_yaml, trial_config
from .errors import EXIT_BAD_INPUT, StudyError
from .log import show_warnings
from .report import build_report
from .study_sections import discrete_values
from .tuning.runner import options_from_args, representative_configs, run_study, study_parser, tokenize_for_study
from .tuning.study_folder import open_study_folder

SEARCH_METRIC = "best_val_acc"   # what TPE maximises: a trial's best val acc over its epochs
SELECT_BY = ("best_val_acc", "test_acc")  # --from-grid: best trial per model by the first one present
SEEDS_FILE = "points_to_evaluate.json"


def parser():
    p = study_parser("python -m tune_study.search", "search_spaces/followup.yaml", __doc__)
    p.add_argument("--from-grid", metavar="STUDY_DIR", default=None,
                   help="a finished grid study folder (<results-dir>/<grid name>, or its trials.parquet): "
                        "its best trial per model (by best_val_acc, else test_acc) is evaluated first "
                        "(points_to_evaluate); axes the grid did not vary come from its space.yaml. "
                        "A trial with a value this space cannot produce (e.g. a batch size not in the "
                        "choice) is passed over with a note, for that model's best trial that fits")
    return p


# ----------------------------------------------------------------------------- the space

def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def load_search_space(path) -> Study:
    """A search study file, validated (config.Study checks what Optuna needs and what training takes)."""
    return load_space(path, kind="search")

def to_domain(spec):
    """One axis of a study file -> a Ray Tune search domain (lists become choices)."""
    from ray import tune

    if isinstance(spec, list):
        return tune.choice(list(spec))
    kind, args = next(iter(spec.items()))
    if kind == "choice":
        return tune.choice(list(args))
    lo, hi = args
    if kind == "loguniform":
        return tune.loguniform(float(lo), float(hi))
    if kind == "uniform":
        return tune.uniform(float(lo), float(hi))
    if kind == "int":
        return tune.randint(int(lo), int(hi) + 1)  # randint's upper end is exclusive; ours is not
    raise StudyError(f"{kind}: unknown distribution")  # load_space rejects these first


def search_param_space(study: Study) -> dict:
    return {**study.fixed, **{k: to_domain(v) for k, v in study.axes.items()}}


def make_searcher(study: Study, points: list[dict] | None = None):
    """OptunaSearch with a seeded TPE sampler; ``points`` are evaluated first. It maximises
    SEARCH_METRIC (a trial's best val acc) while early stopping ranks trials by each epoch's val
    acc: each is given its own metric, and the Tuner none (Tune would hand its one to both)."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return OptunaSearch(metric=SEARCH_METRIC, mode="max",
                        sampler=optuna.samplers.TPESampler(seed=study.search_seed),
                        points_to_evaluate=list(points) if points else None)


# ----------------------------------------------------------------------------- --from-grid

def _plain(v):
    """numpy scalars (parquet, csv) -> Python ones."""
    return v.item() if hasattr(v, "item") and not isinstance(v, (str, bytes)) else v


def _value_in_space(spec, value):
    """``value`` as the distribution holds it, or raise ValueError when the distribution can't produce it."""
    values = discrete_values(spec)
    if values is not None:
        for c in values:
            if type(c) is type(value) or (_is_num(c) and _is_num(value)):
                if c == value:
                    return c
        raise ValueError(f"not one of {values}")
    kind, (lo, hi) = next(iter(spec.items()))
    if not _is_num(value):
        raise ValueError(f"not a number for {kind} [{lo}, {hi}]")
    if not lo <= value <= hi:
        raise ValueError(f"outside {kind} [{lo}, {hi}]")
    if kind == "int":
        if not float(value).is_integer():
            raise ValueError(f"not an integer for int [{lo}, {hi}]")
        return int(value)
    return float(value)


def _grid_trials(path):
    import pandas as pd

    p = Path(path).expanduser()
    if p.is_file() and p.name in ("trials.parquet", "trials.csv"):
        files, study_dir = [p], p.parent
    elif p.is_dir():
        files, study_dir = [p / "trials.parquet", p / "trials.csv"], p
    else:
        raise StudyError(f"--from-grid: {p} does not exist (expected a grid study folder <results-dir>/<name>)")
    f = next((f for f in files if f.is_file()), None)
    if f is None:
        raise StudyError(f"--from-grid: no trials.parquet or trials.csv in {study_dir} "
                         f"(not a finished grid study folder)")
    try:
        df = pd.read_parquet(f) if f.suffix == ".parquet" else pd.read_csv(f)
    except Exception as e:  # corrupt or not a table
        raise StudyError(f"--from-grid: cannot read {f}: {type(e).__name__}: {e}") from None
    return df, f, study_dir


def points_from_grid(path, study: Study, log=print) -> list[dict]:
    """The best trial per model of a grid study, as ``points_to_evaluate`` for this search space.

    Best by best_val_acc (the grid's own model selection), else test_acc; ERROR trials are skipped.
    A point names every axis of this space: the grid trial's value (trials table), else the grid's
    fixed setting (its space.yaml), else the training default. OptunaSearch needs complete points, so
    a trial with a value this space cannot produce (e.g. batch 1024 against choice [16..256]) is
    passed over with a note, and the model's best trial that fits is used instead; a model with no
    fitting trial gives no point. Best-first order; duplicates removed.
    """
    import pandas as pd

    df, f, grid_dir = _grid_trials(path)
    if "model" not in df.columns:
        raise StudyError(f"--from-grid: {f} has no 'model' column (not a study's trials table)")
    metric = next((m for m in SELECT_BY if m in df.columns and df[m].notna().any()), None)
    if metric is None:
        raise StudyError(f"--from-grid: {f} has no finished trial with {' or '.join(SELECT_BY)}")
    ok = df[df[metric].notna()]
    if "status" in ok.columns:
        ok = ok[ok["status"] != "ERROR"]
    ok = ok.sort_values(metric, ascending=False, kind="stable")

    defaults = dict(TRAIN_DEFAULTS)
    try:
        fixed = read_yaml(grid_dir / "space.yaml").get("fixed") or {}
        if not isinstance(fixed, dict):
            fixed = {}
    except StudyError:
        fixed, defaults = {}, {}   # the grid's settings are unknown: only its trials table counts
        log(f"--from-grid: note: no readable {grid_dir / 'space.yaml'}; only the columns of {f.name} are used")

    def to_point(row):
        point = {}
        for key, spec in study.axes.items():
            if key in row.index and not pd.isna(row[key]):
                value = _plain(row[key])
            elif key in fixed:
                value = fixed[key]
            elif key in defaults:
                value = defaults[key]
            else:
                return None, f"the grid does not record {key}"
            try:
                point[key] = _value_in_space(spec, value)
            except ValueError as e:
                return None, f"{key}={value!r} is {e}"
        return point, None

    chosen = []   # (score, point, label)
    for model, trials in ok.groupby("model", sort=False):
        if "model" in study.axes:
            try:
                _value_in_space(study.axes["model"], _plain(model))
            except ValueError as e:
                log(f"--from-grid: note: model {model!r} is {e} in this search space; its trials are not used")
                continue
        elif model != trial_config(study.fixed).model:
            log(f"--from-grid: note: this search trains only {trial_config(study.fixed).model!r}; "
                f"the {model!r} trials are not used")
            continue
        for rank, (_, row) in enumerate(trials.iterrows()):
            score = float(_plain(row[metric]))
            label = f"{model} trial {row.get('trial_id', '?')} ({metric} {score:.4g})"
            point, why = to_point(row)
            if point is None:
                log(f"--from-grid: note: passed over {'the best' if rank == 0 else 'the next'} "
                    f"{label}: {why}")
                continue
            chosen.append((score, point, label))
            break
        else:
            log(f"--from-grid: note: no {model} trial fits this search space; it gets no starting point")
    points = []
    for score, point, label in sorted(chosen, key=lambda c: -c[0]):
        if point in points:
            log(f"--from-grid: note: {label} repeats an earlier point")
            continue
        points.append(point)
        log(f"--from-grid: evaluating first {label}: {point}")
    n = study.num_samples
    if len(points) > n:
        log(f"--from-grid: note: {len(points)} points but num_samples {n}: only the first {n} are run")
    if not points:
        log("--from-grid: note: no grid config fits this search space; the search starts from scratch")
    return points


# ----------------------------------------------------------------------------- CLI

def main(argv=None) -> int:
    args = parser().parse_args(argv)
    show_warnings()
    try:
        study = load_search_space(args.space)
        points = points_from_grid(args.from_grid, study) if args.from_grid else []
        study, study_dir, lock, datasets = open_study_folder(
            study, args, load_search_space, lambda s: tokenize_for_study(s, representative_configs(s)))
        if args.resume:
            if args.from_grid:
                print("--from-grid: note: a resumed search keeps its own searcher state; "
                      "the points only count if the search starts afresh")
        elif points:
            (study_dir / SEEDS_FILE).write_text(json.dumps(
                {"from_grid": str(Path(args.from_grid).expanduser().resolve()), "points": points}, indent=1))
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    warnings.filterwarnings("ignore", category=FutureWarning)
    print(f"search '{study.name}': {study.num_samples} samples, TPE seed {study.search_seed}, "
          f"optimising {SEARCH_METRIC}")
    try:
        return run_study(study, options_from_args(args), search_param_space(study),
                         search_alg=make_searcher(study, points), num_samples=study.num_samples,
                         kind="search", datasets=datasets, build_report=build_report)
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        lock.release()   # (process death releases it too)


if __name__ == "__main__":
    sys.exit(main())
