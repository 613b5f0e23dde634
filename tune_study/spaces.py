"""Study files: a plain YAML loader plus a small validation layer.

A study file (see search_spaces/*.yaml) has these top-level keys:

  name            the study's folder under --results-dir
  description     free text
  axes            grid: each a non-empty list, e.g. batch_size: [16, 64]
                  search: each a list (fixed choice) or a distribution:
                  {loguniform: [lo, hi]}, {uniform: [lo, hi]}, {int: [lo, hi]}, {choice: [...]}
  fixed           training settings shared by every trial (any key of training.TRAIN_DEFAULTS)
  early_stopping  off, or {grace_period: 1, reduction_factor: 2} (ASHA on val_acc, one rung per epoch)
  resources       {cpus_per_trial, gpus_per_trial, max_concurrent_trials, gpu_fraction}
  max_failures    retries of a crashed trial from its last checkpoint (FailureConfig)
  checkpoints_to_keep   model checkpoints kept per trial (at most 2)
  storage_path    where Ray keeps the experiment (a directory or a pyarrow URI); default: the study folder
  num_samples     search only: how many trials to sample
  search_seed     search only: the sampler's seed

Every error is one line naming the file and the key: ``default.yaml: key 'fixed.lr': ...``.
"""
from __future__ import annotations

import itertools
import math
from pathlib import Path

import yaml

from .errors import StudyError
from .training import TRAIN_DEFAULTS, resolve_config

TOP_KEYS = {"name", "description", "axes", "fixed", "early_stopping", "resources", "max_failures",
            "checkpoints_to_keep", "storage_path", "num_samples", "search_seed"}
SEARCH_ONLY = {"num_samples", "search_seed"}
RESOURCE_KEYS = {"cpus_per_trial", "gpus_per_trial", "max_concurrent_trials", "gpu_fraction"}
ES_KEYS = {"grace_period", "reduction_factor"}
DISTRIBUTIONS = {"loguniform", "uniform", "int", "choice"}


def _err(path, key, msg):
    return StudyError(f"{path}: key '{key}': {msg}", key=key)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"{path}: study file not found")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise StudyError(f"{path}: malformed YAML{where}: {getattr(e, 'problem', None) or e}") from e
    if not isinstance(doc, dict):
        raise StudyError(f"{path}: expected a mapping at the top level, got {type(doc).__name__}")
    return doc


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _check_distribution(path, key, spec):
    if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in DISTRIBUTIONS):
        raise _err(path, key, f"expected a list or one of {{{', '.join(sorted(DISTRIBUTIONS))}: ...}}, got {spec!r}")
    kind, args = next(iter(spec.items()))
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise _err(path, key, "choice needs a non-empty list")
        return
    if not (isinstance(args, list) and len(args) == 2 and all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)):
        raise _err(path, key, f"{kind} needs [low, high], got {args!r}")
    lo, hi = args
    if not lo < hi:
        raise _err(path, key, f"{kind}: low {lo} must be below high {hi}")
    if kind == "loguniform" and lo <= 0:
        raise _err(path, key, f"loguniform needs low > 0, got {lo}")
    if kind == "int" and not (_is_int(lo) and _is_int(hi)):
        raise _err(path, key, f"int needs integer bounds, got {args!r}")


def _axis_values(spec) -> list:
    """Representative values of an axis, for validation: the list, or a distribution's ends."""
    if isinstance(spec, list):
        return spec
    kind, args = next(iter(spec.items()))
    return args if kind == "choice" else [args[0], args[1]]


def load_space(path: str | Path, kind: str = "grid") -> dict:
    """Read and validate a study file; returns it with defaults filled in."""
    path = Path(path)
    doc = read_yaml(path)
    allowed = TOP_KEYS if kind == "search" else TOP_KEYS - SEARCH_ONLY
    for key in doc:
        if key not in allowed:
            raise _err(path, key, f"unknown key (known: {', '.join(sorted(allowed))})")

    name = doc.get("name", path.stem)
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise _err(path, "name", f"expected a plain folder name, got {name!r}")

    axes = doc.get("axes")
    if not isinstance(axes, dict) or not axes:
        raise _err(path, "axes", "expected a non-empty mapping of axis -> values")
    fixed = doc.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise _err(path, "fixed", f"expected a mapping, got {type(fixed).__name__}")
    for section, keys in (("axes", axes), ("fixed", fixed)):
        for key in keys:
            if key not in TRAIN_DEFAULTS:
                raise _err(path, f"{section}.{key}", f"unknown key (known: {', '.join(TRAIN_DEFAULTS)})")
    both = set(axes) & set(fixed)
    if both:
        k = sorted(both)[0]
        raise _err(path, f"axes.{k}", "is both an axis and a fixed setting")
    if "data" in axes:
        raise _err(path, "axes.data", "data cannot be an axis: one study, one dataset")
    for key, spec in axes.items():
        if kind == "grid":
            if not isinstance(spec, list):
                raise _err(path, f"axes.{key}", f"expected a list of values, got {spec!r}")
            if not spec:
                raise _err(path, f"axes.{key}", "empty axis: give at least one value")
            if len(set(map(repr, spec))) != len(spec):
                raise _err(path, f"axes.{key}", f"repeated value in {spec!r}")
        else:
            if isinstance(spec, dict) and next(iter(spec), None) == "grid_search":
                raise _err(path, f"axes.{key}", "OptunaSearch cannot take grid_search; use {choice: [...]}")
            if isinstance(spec, list):
                if not spec:
                    raise _err(path, f"axes.{key}", "empty axis: give at least one value")
            else:
                _check_distribution(path, f"axes.{key}", spec)

    # Every combination of the axes' (representative) values must be a valid training config.
    names = list(axes)
    combos = itertools.product(*(_axis_values(axes[k]) for k in names))
    for combo in itertools.islice(combos, 5000):
        try:
            resolve_config({**fixed, **dict(zip(names, combo))})
        except StudyError as e:
            k = e.key or "fixed"
            top = k.split(".")[0]
            section = "axes" if top in axes else "fixed"
            msg = str(e)[len(k) + 2:] if str(e).startswith(k + ":") else str(e)
            raise _err(path, f"{section}.{k}", msg) from None

    es = doc.get("early_stopping", {"grace_period": 1, "reduction_factor": 2})
    if es is False or es in ("off", "none", None):
        es = None
    elif es is True or es == "asha":
        es = {"grace_period": 1, "reduction_factor": 2}
    elif isinstance(es, dict):
        for k in es:
            if k not in ES_KEYS:
                raise _err(path, f"early_stopping.{k}", f"unknown key (known: {', '.join(sorted(ES_KEYS))})")
        es = {"grace_period": 1, "reduction_factor": 2, **es}
        if not _is_int(es["grace_period"]) or es["grace_period"] < 1:
            raise _err(path, "early_stopping.grace_period", f"expected an integer >= 1, got {es['grace_period']!r}")
        rf = es["reduction_factor"]
        if not isinstance(rf, (int, float)) or isinstance(rf, bool) or rf <= 1:
            raise _err(path, "early_stopping.reduction_factor", f"expected a number > 1, got {rf!r}")
    else:
        raise _err(path, "early_stopping", f"expected off or a mapping, got {es!r}")

    res = doc.get("resources") or {}
    if not isinstance(res, dict):
        raise _err(path, "resources", f"expected a mapping, got {res!r}")
    for k, v in res.items():
        if k not in RESOURCE_KEYS:
            raise _err(path, f"resources.{k}", f"unknown key (known: {', '.join(sorted(RESOURCE_KEYS))})")
        if k == "gpu_fraction":
            if not isinstance(v, dict) or not all(
                    (_is_int(b) or b == "default") and isinstance(f, (int, float)) and not isinstance(f, bool)
                    and 0 < f <= 1 for b, f in v.items()):
                raise _err(path, "resources.gpu_fraction",
                           f"expected {{max effective batch: fraction in (0, 1], default: fraction}}, got {v!r}")
        elif v != "auto" and not (isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
                                  and (k != "max_concurrent_trials" or (_is_int(v) and v >= 1))):
            raise _err(path, f"resources.{k}", f"expected 'auto' or a number >= 0, got {v!r}")
    res = {"cpus_per_trial": "auto", "gpus_per_trial": "auto", "max_concurrent_trials": "auto",
           "gpu_fraction": None, **res}

    mf = doc.get("max_failures", 2)
    if not _is_int(mf) or mf < 0:
        raise _err(path, "max_failures", f"expected an integer >= 0, got {mf!r}")
    keep = doc.get("checkpoints_to_keep", 2)
    if not _is_int(keep) or not 1 <= keep <= 2:
        raise _err(path, "checkpoints_to_keep", f"expected 1 or 2 (disk stays bounded), got {keep!r}")
    storage = doc.get("storage_path")
    if storage is not None and not isinstance(storage, str):
        raise _err(path, "storage_path", f"expected a path or URI, got {storage!r}")
    study = {"name": name, "description": doc.get("description", ""), "axes": axes, "fixed": fixed,
             "early_stopping": es, "resources": res, "max_failures": mf, "checkpoints_to_keep": keep,
             "storage_path": storage, "path": str(path)}
    if kind == "search":
        ns = doc.get("num_samples", 8)
        if not _is_int(ns) or ns < 1:
            raise _err(path, "num_samples", f"expected an integer >= 1, got {ns!r}")
        seed = doc.get("search_seed", 0)
        if not _is_int(seed):
            raise _err(path, "search_seed", f"expected an integer, got {seed!r}")
        study.update(num_samples=ns, search_seed=seed)
    return study


def epochs_of(study: dict) -> int:
    """The most epochs any trial can run (ASHA's max_t)."""
    if "epochs" in study["axes"]:
        return max(_axis_values(study["axes"]["epochs"]))
    return study["fixed"].get("epochs", TRAIN_DEFAULTS["epochs"])


def grid_size(study: dict) -> int:
    return math.prod(len(v) for v in study["axes"].values() if isinstance(v, list))
