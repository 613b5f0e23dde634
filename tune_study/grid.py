"""The grid study on Ray Tune: ``python -m tune_study.grid [--space FILE] [--resume] ...``.

batch size x model x scheduler (x seed) as ``tune.grid_search`` axes, ASHA early stopping on val
acc (one rung per epoch), checkpoints every epoch (at most 2 kept per trial), retries from the last
checkpoint, ``--resume`` through ``Tuner.restore``. Output: <results-dir>/<study name>/ with the Ray
experiment (tune/), trials.csv/.parquet, history.csv/.parquet and the report.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

from .errors import EXIT_BAD_INPUT, StudyError
from .results import EXPERIMENT, console_table, export
from .config import epochs_of, grid_size, load_space

EXPOSED_WARNING = (
    "WARNING: the Ray dashboard will listen on {host}, i.e. on every network interface. An exposed Ray "
    "dashboard and jobs API let anyone who can reach it run code on this machine (ShadowRay, "
    "CVE-2023-48022). Keep token auth on and firewall the port, or use 127.0.0.1 with an SSH tunnel.")


def parser(prog: str = "python -m tune_study.grid", default_space: str = "search_spaces/default.yaml",
           description: str = __doc__) -> argparse.ArgumentParser:
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
    p.add_argument("--keep-alive", action="store_true",
                   help="after the study, keep the driver (and the dashboard) up until Ctrl-C")
    p.add_argument("--no-report", action="store_true", help="skip building report.md and the figures")
    return p


# ----------------------------------------------------------------------------- folders

def study_paths(results_dir: str, study: dict) -> tuple[Path, str]:
    """(local study folder, Ray storage path: the study folder or the YAML's storage_path URI/dir)."""
    study_dir = Path(results_dir).expanduser().resolve() / study["name"]
    storage = study["storage_path"]
    if storage is None:
        storage = str(study_dir)
    elif "://" not in storage:
        storage = str(Path(storage).expanduser().resolve() / study["name"])
    else:
        storage = storage.rstrip("/") + "/" + study["name"]
    return study_dir, storage


def check_study_dir(study_dir: Path, resume: bool) -> None:
    """Refuse to clobber a study, to resume a missing one, or to write where we can't. Writes nothing."""
    import tempfile

    if resume:
        if not (study_dir / "space.yaml").exists():
            raise StudyError(f"--resume: no study at {study_dir} (nothing to resume; run without --resume)")
        return
    if study_dir.exists() and (not study_dir.is_dir() or any(study_dir.iterdir())):
        raise StudyError(f"study folder {study_dir} already exists: add --resume to finish it, "
                         f"or pick another --results-dir or study name (nothing was overwritten)")
    ancestor = study_dir.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise StudyError(f"--results-dir: cannot write to {study_dir.parent}: {ancestor} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as e:
        raise StudyError(f"--results-dir: cannot write to {study_dir.parent}: {e.strerror or e}") from e


def create_study_dir(study_dir: Path, space_path: str | Path) -> None:
    try:
        study_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(space_path, study_dir / "space.yaml")
    except OSError as e:
        raise StudyError(f"--results-dir: cannot write to {study_dir}: {e.strerror or e}") from e


# ----------------------------------------------------------------------------- Ray

def dashboard_warning(host: str) -> str | None:
    """The plain warning for a dashboard bound beyond loopback; None for loopback."""
    return None if host in ("127.0.0.1", "localhost", "::1") else EXPOSED_WARNING.format(host=host)


def dashboard_unavailable() -> str | None:
    """Why Ray's dashboard cannot run here (a package of the ``default`` extra is missing), or None.
    Ray's own list of what the dashboard imports is the module ``ray.dashboard.optional_deps``."""
    import importlib

    try:
        importlib.import_module("ray.dashboard.optional_deps")
    except ImportError as e:
        return f"{type(e).__name__}: {e}"
    return None


def init_ray(address: str | None, dashboard_host: str, dashboard_port: int, num_cpus: int | None):
    """Start or join Ray with the dashboard; a missing dashboard is a warning, not a crash."""
    import ray

    if ray.is_initialized():  # a caller (a notebook, a test) already runs Ray: use it, leave it up
        return None
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        print("WARNING: RAY_AUTH_MODE=disabled: the dashboard and jobs API accept anyone who can reach them.")
    if address:
        return ray.init(address=address)
    warning = dashboard_warning(dashboard_host)
    if warning:
        print(warning)
    kw = {"num_cpus": num_cpus, "dashboard_host": dashboard_host, "dashboard_port": dashboard_port}
    kw["address"] = "local"  # a new local instance, never a cluster someone else started here
    import torch

    if torch.cuda.is_available():
        # Ray counts GPUs through NVML and says 0, without an error, when that fails: the grid would
        # then run every trial at once, uncapped, on the GPU torch sees. Tell Ray what torch sees.
        kw["num_gpus"] = torch.cuda.device_count()
    missing = dashboard_unavailable()
    if missing:
        # Checked before ray.init: a start that fails on the dashboard leaves its half-started
        # processes behind, and the next ray.init then times out.
        print(f"WARNING: the Ray dashboard is not available here ({missing}); running without it. "
              "Install ray[default] for the dashboard.")
        return ray.init(include_dashboard=False, **kw)
    try:
        return ray.init(include_dashboard=True, **kw)
    except Exception as e:  # e.g. the 'default' extra (aiohttp_cors, opencensus) is not installed
        print(f"WARNING: the Ray dashboard could not start ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
              "running without it. Install ray[default] for the dashboard.")
        if ray.is_initialized():
            ray.shutdown()
        return ray.init(include_dashboard=False, **kw)


def print_dashboard(ctx) -> None:
    url = getattr(ctx, "dashboard_url", None)
    if ctx is None:
        print("Ray: using the Ray instance already running in this process")
        return
    if not url:
        print("Ray dashboard: not running")
        return
    url = url if "://" in url else f"http://{url}"
    token = Path.home() / ".ray" / "auth_token"
    print(f"Ray dashboard: {url}")
    if os.environ.get("RAY_AUTH_MODE", "token").lower() != "disabled":
        print(f"  log in with the token in {token} (print it with `ray get-auth-token`); "
              "APIs answer 401 without it")


def resources_for(study: dict, n_trials: int):
    """Per-trial resources: CPU threads split across concurrent trials; GPU (fractions) on GPU clusters."""
    import ray

    res = study["resources"]
    cluster = ray.cluster_resources()
    cpus, gpus = int(cluster.get("CPU", 1)), cluster.get("GPU", 0)
    conc = res["max_concurrent_trials"]
    if gpus:
        gpt = 1 if res["gpus_per_trial"] == "auto" else res["gpus_per_trial"]
        if conc == "auto":
            conc = None  # Ray packs by the GPU fractions below
        cpt = res["cpus_per_trial"]
        if cpt == "auto":  # share the CPUs among as many trials as the GPUs can hold at once
            smallest = min([gpt or 1, *(res.get("gpu_fraction") or {}).values()])
            cpt = max(1, cpus // max(1, int(gpus / smallest)))
    else:
        gpt = 0
        if conc == "auto":
            conc = max(1, min(n_trials, cpus))  # one trial per core beats 2 threads per trial here
        cpt = res["cpus_per_trial"]
        if cpt == "auto":
            cpt = max(1, cpus // conc)
    fractions = res.get("gpu_fraction")

    def per_trial(config):
        g = gpt
        if gpus and fractions:
            g = fractions.get("default", gpt)
            for limit in sorted(k for k in fractions if k != "default"):
                if config["batch_size"] <= limit:
                    g = fractions[limit]
                    break
        return {"cpu": cpt, "gpu": g}

    return per_trial, conc, int(max(1, cpt))


def tokenize_for_study(study: dict, param_configs: list[dict]) -> dict:
    """Tokenize once per (tokenizer, max_len) on the driver; trials get it via the object store."""
    from .data import load_tokenized
    from .models import tokenizer_id

    out = {}
    data = study["fixed"].get("data", {})
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


def representative_configs(study: dict) -> list[dict]:
    """(model, max_len) pairs any trial can have, for tokenizing up front."""
    from .config import TRAIN_DEFAULTS

    def values(key):
        v = study["axes"].get(key)
        if v is None:
            return [study["fixed"].get(key, TRAIN_DEFAULTS[key])]
        if isinstance(v, dict):
            return next(iter(v.values())) if "choice" in v else None
        return v

    models, lens = values("model"), values("max_len")
    if models is None or lens is None:
        raise StudyError(f"{study['path']}: key 'axes.model': model and max_len must be lists or choices")
    return [{"model": m, "max_len": L} for m in models for L in lens]


def run_study(study: dict, args, *, param_space: dict, search_alg=None, num_samples: int = 1,
              kind: str = "grid", datasets: dict | None = None) -> int:
    """Shared by the grid and the Optuna search: Ray up, Tuner.fit/restore, exports, report."""
    from ray import tune
    from ray.tune import CheckpointConfig, FailureConfig, RunConfig
    from ray.tune.schedulers import ASHAScheduler

    from .training import trainable

    study_dir, storage = study_paths(args.results_dir, study)
    # Tune's classic CLIReporter (our columns: model, batch, scheduler, epoch, val acc); the newer
    # console output ignores a passed reporter and prints every result in full.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray

    owned = not ray.is_initialized()
    ctx = init_ray(args.address, args.dashboard_host, args.dashboard_port, args.num_cpus)
    try:
        print_dashboard(ctx)
        n_trials = grid_size(study) * num_samples if kind == "grid" else num_samples
        per_trial, conc, threads = resources_for(study, n_trials)
        if datasets is None:
            datasets = tokenize_for_study(study, representative_configs(study))
        exp_path = f"{storage}/{EXPERIMENT}"
        local_exp = None if "://" in exp_path else exp_path
        if local_exp:
            Path(local_exp).mkdir(parents=True, exist_ok=True)
        trainable_ = tune.with_resources(
            tune.with_parameters(trainable, datasets=datasets, experiment_dir=local_exp), per_trial)

        if args.resume and tune.Tuner.can_restore(exp_path):
            print(f"resuming {exp_path}")
            tuner = tune.Tuner.restore(exp_path, trainable_, resume_unfinished=True, resume_errored=True)
        else:
            if args.resume:
                print(f"no Ray experiment at {exp_path} yet: starting the study fresh")
            epochs = epochs_of(study)
            es = study["early_stopping"]
            scheduler = (ASHAScheduler(time_attr="training_iteration", max_t=epochs,
                                       grace_period=min(es["grace_period"], epochs),
                                       reduction_factor=es["reduction_factor"]) if es else None)
            space = {**param_space}
            if "threads" not in space and not study["fixed"].get("threads"):
                space["threads"] = threads
            reporter = tune.CLIReporter(
                parameter_columns={k: k for k in ("model", "batch_size", "scheduler", "seed", "lr") if k in study["axes"]},
                metric_columns={"epoch": "epoch", "val_acc": "val_acc", "val_loss": "val_loss",
                                "test_acc": "test_acc", "samples_per_s": "samples/s"},
                max_report_frequency=30, sort_by_metric=False)
            tuner = tune.Tuner(
                trainable_, param_space=space,
                tune_config=tune.TuneConfig(metric="val_acc", mode="max", scheduler=scheduler,
                                            search_alg=search_alg, num_samples=num_samples,
                                            max_concurrent_trials=conc,
                                            trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
                run_config=RunConfig(
                    name=EXPERIMENT, storage_path=storage, progress_reporter=reporter, verbose=1,
                    checkpoint_config=CheckpointConfig(num_to_keep=study["checkpoints_to_keep"]),
                    failure_config=FailureConfig(max_failures=study["max_failures"])))
        t0 = time.time()
        result_grid = tuner.fit()
        wall = time.time() - t0
        try:  # the saved experiment state knows which trials an interrupt (Ctrl-C) left unfinished
            from .results import load_result_grid

            result_grid = load_result_grid(exp_path)
        except Exception:
            pass
        trials, _ = export(result_grid, study, study_dir)
        print(f"\n{kind} '{study['name']}': {len(trials)} trials in {wall:.0f} s; exports in {study_dir}")
        print(console_table(trials, list(study["axes"])))
        if not getattr(args, "no_report", False):
            try:
                from .report import build_report

                build_report(study_dir)
                print(f"report: {study_dir / 'report.md'}")
            except Exception as e:  # the exports are written; a report problem must not sink the study
                print(f"WARNING: the report failed ({type(e).__name__}: {e}); the exports are complete. "
                      f"Retry with: python -m tune_study.report {study_dir}")
        n_err = int((trials["status"] == "ERROR").sum()) if len(trials) else 0
        unfinished = int(trials["status"].isin(["RUNNING", "PENDING", "PAUSED"]).sum()) if len(trials) else 0
        if unfinished:
            print(f"study interrupted: {unfinished} trial(s) unfinished; finish them with --resume")
        if args.keep_alive:
            print_dashboard(ctx)
            print("keeping the driver alive for the dashboard; Ctrl-C to stop")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
        return 1 if n_err or unfinished else 0
    finally:
        if owned:
            ray.shutdown()


def _trial_name(trial) -> str:
    c = trial.config
    parts = [str(c.get("model", "m")).replace("/", "_"), f"b{c.get('batch_size')}", str(c.get("scheduler", ""))]
    if "seed" in c:
        parts.append(f"s{c['seed']}")
    return "_".join(parts) + f"_{trial.trial_id}"


def grid_param_space(study: dict) -> dict:
    from ray import tune

    return {**study["fixed"], **{k: tune.grid_search(v) for k, v in study["axes"].items()}}


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        study = load_space(args.space, kind="grid")
        study_dir, _ = study_paths(args.results_dir, study)
        check_study_dir(study_dir, args.resume)
        if args.resume:  # the study's own copy decides what is being finished
            study = load_space(study_dir / "space.yaml", kind="grid")
        # Load and tokenize before anything is written: bad data is an input error, not a crash.
        datasets = tokenize_for_study(study, representative_configs(study))
        if not args.resume:
            create_study_dir(study_dir, args.space)
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        return run_study(study, args, param_space=grid_param_space(study), kind="grid", datasets=datasets)
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
