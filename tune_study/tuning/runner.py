"""The study runner: everything Ray. ``grid`` and ``search`` are its command lines.

``run_study(study, options, param_space, ...)`` starts (or joins) Ray, tokenizes the data once on
the driver, runs the Tune experiment (or restores it with ``--resume``), exports the tables
(``results``) and builds the report. With ``repeat: {top: K, seeds: [...]}`` in the study file, the
K best configs of that run (by best val accuracy, ties by lower best val loss; never by test) are
then rerun over the seeds, without early stopping, as a second experiment in the same folder:

  <storage>/tune     the grid or search (stage "grid" / "search")
  <storage>/repeat   the seed repeats (stage "repeat"); the exports hold both, with a ``stage`` column
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import Study, trial_config
from ..errors import StudyError
from ..study_sections import Repeat, discrete_values
from .ray_setup import init_ray, keep_alive, print_dashboard, resources_for
from .results import EXPERIMENT, REPEAT_EXPERIMENT, console_table, export, load_result_grid
from .study_folder import restorable, study_paths
from .trainable import trainable, trial_name
from .trial_files import is_out_of_space, print_disk_estimate

log = logging.getLogger(__name__)


@dataclass
class StudyOptions:
    """How to run a study (the flags of ``study_parser``); ``StudyOptions(**vars(args))`` takes the rest."""
    results_dir: str = "results"
    resume: bool = False
    address: str | None = None
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = 8265
    no_dashboard: bool = False
    num_cpus: int | None = None
    keep_alive: bool = False
    no_report: bool = False


def study_parser(prog: str, default_space: str, description: str) -> argparse.ArgumentParser:
    """The flags every study command takes (the fields of StudyOptions, plus --space)."""
    p = argparse.ArgumentParser(prog=prog, description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", default=default_space,
                   help=f"study file (YAML) naming axes, fixed settings, early stopping and resources "
                        f"(default: {default_space})")
    p.add_argument("--results-dir", default="results",
                   help="parent folder; the study writes into <results-dir>/<study name>/ (default: results)")
    p.add_argument("--resume", action="store_true",
                   help="finish an interrupted study (Tuner.restore): unfinished and errored trials go on "
                        "from their last checkpoint, finished trials are not rerun")
    p.add_argument("--address", default=None,
                   help="join an existing Ray cluster (e.g. 'auto' or 'ray://host:10001') instead of starting "
                        "a local one; its dashboard is used")
    p.add_argument("--dashboard-host", default="127.0.0.1",
                   help="interface the local Ray dashboard binds to (default 127.0.0.1; binding to every "
                        "interface exposes it to the network and prints a warning)")
    p.add_argument("--dashboard-port", type=int, default=8265, help="local dashboard port (default 8265)")
    p.add_argument("--num-cpus", type=int, default=None,
                   help="CPUs the local Ray instance may use (default: all)")
    headless = p.add_mutually_exclusive_group()   # keeping the driver up is for its dashboard
    headless.add_argument("--keep-alive", action="store_true",
                          help="after the study, keep the driver (and the dashboard) up until Ctrl-C")
    headless.add_argument("--no-dashboard", action="store_true",
                          help="start the local Ray instance without its dashboard (headless batch jobs, CI; "
                               "a cluster joined with --address keeps its own)")
    p.add_argument("--no-report", action="store_true", help="skip building report.md and the figures")
    return p


def options_from_args(args) -> StudyOptions:
    return StudyOptions(**{k: getattr(args, k) for k in StudyOptions.__dataclass_fields__})


# ----------------------------------------------------------------------------- data

def tokenize_for_study(study: Study, param_configs: list[dict]) -> dict:
    """Tokenize once per (tokenizer, max_len) on the driver; trials get it via the object store."""
    from ..data import load_tokenized
    from ..models import tokenizer_id

    out = {}
    data = study.fixed.get("data", {})
    for cfg in param_configs:
        key = f"{tokenizer_id(cfg['model'])}|{cfg['max_len']}"
        if key not in out:
            t0 = time.time()
            out[key] = load_tokenized(data, cfg["model"], cfg["max_len"])
            meta = out[key]["meta"]
            print(f"data: {meta['source']} {meta['n_train']}/{meta['n_val']}/{meta['n_test']} "
                  f"train/val/test, tokenizer {meta['tokenizer']}, max_len {meta['max_len']} "
                  f"({time.time() - t0:.1f} s)")
    return out


def representative_configs(study: Study) -> list[dict]:
    """(model, max_len) pairs any trial can have, for tokenizing up front."""
    def values(key):
        v = study.axes.get(key)
        return [getattr(trial_config(study.fixed), key)] if v is None else discrete_values(v)

    models, lens = values("model"), values("max_len")
    if models is None or lens is None:
        raise StudyError(f"{study.path}: key 'axes.model': model and max_len must be lists or choices")
    return [{"model": m, "max_len": L} for m in models for L in lens]


# ----------------------------------------------------------------------------- the repeat stage

def top_configs(result_grid, k: int) -> list[dict]:
    """The k best trials' configs by best val accuracy, ties by lower best val loss (never test)."""
    ranked = []
    for r in result_grid:
        m = r.metrics or {}
        if r.error or m.get("best_val_acc") is None:
            continue
        loss = m.get("best_val_loss")
        ranked.append((-float(m["best_val_acc"]), float("inf") if loss is None else float(loss), r.config))
    ranked.sort(key=lambda x: x[:2])
    return [cfg for *_, cfg in ranked[:k]]


def repeat_points(result_grid, repeat: Repeat) -> list[dict]:
    """One config per (top config, seed): the configs as they ran, with the seed replaced."""
    return [{**cfg, "seed": s} for cfg in top_configs(result_grid, repeat.top) for s in repeat.seeds]


# ----------------------------------------------------------------------------- running

def _tuner(study, trainable_, exp_path, storage, name, param_space, *, search_alg, num_samples, conc,
           scheduler, resume, stage, study_dir):
    from ray import tune
    from ray.tune import CheckpointConfig, FailureConfig, RunConfig

    from .callbacks import study_callbacks

    if resume and restorable(exp_path):
        print(f"resuming {exp_path}")
        return tune.Tuner.restore(exp_path, trainable_, resume_unfinished=True, resume_errored=True)
    if resume:
        print(f"no Ray experiment snapshot at {exp_path} yet (the driver stopped before Tune saved one): "
              "starting it fresh")
    reporter = tune.CLIReporter(
        parameter_columns={k: k for k in ("model", "batch_size", "scheduler", "seed", "lr", "lr_scaling")
                           if k in study.axes or (name == REPEAT_EXPERIMENT and k in param_space)},
        metric_columns={"epoch": "epoch", "val_acc": "val_acc", "val_loss": "val_loss",
                        "test_acc": "test_acc", "samples_per_s": "samples/s"},
        max_report_frequency=30, sort_by_metric=False)
    return tune.Tuner(
        trainable_, param_space=param_space,
        # no metric here: early stopping and the searcher name their own (a TuneConfig metric
        # would be handed to both)
        tune_config=tune.TuneConfig(scheduler=scheduler, search_alg=search_alg,
                                    num_samples=num_samples, max_concurrent_trials=conc,
                                    trial_name_creator=trial_name, trial_dirname_creator=trial_name,
                                    # a finished trial's worker runs the next one (same resources): the
                                    # seconds of importing torch and transformers are paid once per
                                    # worker, not per trial; train() seeds everything it draws from
                                    reuse_actors=True),
        run_config=RunConfig(
            name=name, storage_path=storage, progress_reporter=reporter, verbose=1,
            checkpoint_config=CheckpointConfig(num_to_keep=study.checkpoints_to_keep),
            callbacks=study_callbacks(study, stage, study_dir),
            failure_config=FailureConfig(max_failures=study.max_failures),
            # the best model is an artifact of the trial folder: persisted to remote storage too
            sync_config=tune.SyncConfig(sync_artifacts=True)))


def _fit_and_reload(tuner, exp_path):
    result_grid = tuner.fit()
    try:  # the saved experiment state knows which trials an interrupt (Ctrl-C) left unfinished
        return load_result_grid(exp_path)
    except Exception:
        return result_grid


def _unfinished(trials) -> int:
    return int(trials["status"].isin(["RUNNING", "PENDING", "PAUSED"]).sum()) if len(trials) else 0


def run_study(study: Study, options, param_space: dict, search_alg=None, num_samples: int = 1,
              kind: str = "grid", datasets: dict | None = None, build_report=None) -> int:
    """Ray up, the study's Tune run (fit or restore), its repeat stage if any, exports, report.
    ``options``: a StudyOptions (or argparse namespace with its fields). ``build_report(study_dir,
    headline=[])``: ``report.build_report``, which the command lines pass in (the report reads the
    exports; tuning does not import it); None or ``options.no_report``: no report. Returns the exit
    code: 0, or 1 when a trial errored or the run was interrupted."""
    import ray
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from .early_stopping import make_scheduler

    study_dir, storage = study_paths(options.results_dir, study)
    # Tune's classic CLIReporter (our columns); the newer console output ignores a passed reporter.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    owned = not ray.is_initialized()
    ctx = init_ray(options.address, options.dashboard_host, options.dashboard_port, options.num_cpus,
                   dashboard=not options.no_dashboard)
    try:
        print_dashboard(ctx)
        n_trials = study.grid_size() * num_samples if kind == "grid" else num_samples
        per_trial, conc, threads = resources_for(study.resources, n_trials)
        if datasets is None:
            datasets = tokenize_for_study(study, representative_configs(study))

        def make_trainable(exp_path):
            local_exp = None if "://" in exp_path else exp_path
            if local_exp:
                Path(local_exp).mkdir(parents=True, exist_ok=True)
            return tune.with_resources(tune.with_parameters(
                trainable, datasets=datasets, experiment_dir=local_exp,
                experiment_uri=None if local_exp else exp_path), per_trial)

        exp_path, rep_path = f"{storage}/{EXPERIMENT}", f"{storage}/{REPEAT_EXPERIMENT}"
        repeat = study.repeat
        print_disk_estimate(study, n_trials + (repeat.top * len(repeat.seeds) if repeat else 0), conc, storage,
                            [c["model"] for c in representative_configs(study)])
        t0 = time.time()
        try:
            if options.resume and repeat and restorable(rep_path):
                result_grid = load_result_grid(exp_path)  # the first stage finished before the repeats began
            else:
                scheduler = make_scheduler(study)   # ASHA in trial order (early_stopping)
                space = {**param_space}
                if "threads" not in space and not study.fixed.get("threads"):
                    space["threads"] = threads
                tuner = _tuner(study, make_trainable(exp_path), exp_path, storage, EXPERIMENT, space,
                               search_alg=search_alg, num_samples=num_samples, conc=conc, scheduler=scheduler,
                               resume=options.resume, stage=kind, study_dir=study_dir)
                result_grid = _fit_and_reload(tuner, exp_path)
            grids = [(kind, result_grid)]
            trials, _ = export(grids, study, study_dir)
            if repeat and not _unfinished(trials):
                restoring = options.resume and restorable(rep_path)
                points = [] if restoring else repeat_points(result_grid, repeat)
                if restoring or points:
                    print(f"repeat: the top {repeat.top} configs x seeds {repeat.seeds}, no early stopping")
                    # the points name every key, so the space must too (each point's values replace its)
                    tuner = _tuner(study, make_trainable(rep_path), rep_path, storage, REPEAT_EXPERIMENT,
                                   dict(points[0]) if points else {},
                                   search_alg=BasicVariantGenerator(points_to_evaluate=points),
                                   num_samples=len(points), conc=conc, scheduler=None, resume=options.resume,
                                   stage="repeat", study_dir=study_dir)
                    grids.append(("repeat", _fit_and_reload(tuner, rep_path)))
                    trials, _ = export(grids, study, study_dir)
        except Exception as e:
            if not is_out_of_space(e):
                raise
            # What finished is exported (from the experiment's files) if the disk allows it.
            with contextlib.suppress(Exception):
                export([(kind, load_result_grid(exp_path))], study, study_dir)
            print(f"error: out of disk space (ENOSPC) under {study_dir} (storage {storage}): "
                  f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}; the finished trials are "
                  "exported as far as space allowed; free space, then run the same command with --resume",
                  file=sys.stderr)
            return 1
        wall = time.time() - t0
        print(f"\n{kind} '{study.name}': {len(trials)} trials in {wall:.0f} s; exports in {study_dir}")
        print(console_table(trials, list(study.axes)))
        report_error = None
        if build_report is not None and not options.no_report:
            try:
                headline = []
                build_report(study_dir, headline=headline)
                print("\n" + "\n".join(headline))   # the answer in the console, then where the rest is
                print(f"report: {study_dir / 'report.md'}")
            except Exception as e:  # the exports are written; a report problem must not sink the study
                report_error = e
                log.warning("the report failed (%s: %s); the exports are complete. Retry with: "
                            "python -m tune_study.report %s", type(e).__name__, e, study_dir)
        n_err = int((trials["status"] == "ERROR").sum()) if len(trials) else 0
        unfinished = _unfinished(trials)
        if unfinished:
            print(f"study interrupted: {unfinished} trial(s) unfinished; finish them with --resume")
        sys.stdout.flush()
        if options.keep_alive:
            keep_alive(ctx)
        no_space = int(trials["error"].fillna("").map(is_out_of_space).sum()) if len(trials) else 0
        if no_space or is_out_of_space(report_error):
            # the last line, where a user looks first: a full disk is named, with the folder
            print(f"error: out of disk space (ENOSPC) under {study_dir} (storage {storage}): {no_space} "
                  f"trial(s) stopped{' and the report failed' if report_error else ''}; the finished trials "
                  "are exported; free space, then run the same command with --resume", file=sys.stderr)
        return 1 if n_err or unfinished or no_space or is_out_of_space(report_error) else 0
    finally:
        if owned:
            ray.shutdown()
