"""The study report: ``python -m tune_study.report <results-dir>/<study>`` or ``build_report(study_dir)``.

Reads trials/history (rebuilt from the Ray experiment in ``<study>/tune`` when they are missing or
older than it, e.g. after an interrupted study), flags collapsed trials, and writes beside them:

  report.md                  findings computed from the numbers, the tables, the figures
  test_table.csv             one row per trial: best-val epoch, test loss / acc (Wilson 95% CI),
                             calibration, stopped early, collapsed
  test_table_by_config.csv   with several seeds: mean and 95% t-interval per config
  fig_curves_epoch.png       train loss, val loss, val acc against epoch (the seed's figures)
  fig_curves_steps.png       the same against optimizer steps (log x) ...
  fig_curves_samples.png     ... and against training samples seen
  fig_test_vs_batch.png      test acc / loss / ECE against batch size (grid studies)
  fig_reliability.png        reliability diagrams of the best-val weights on test
  fig_search_history.png     search studies: accuracy by trial order with the running best
trials.csv / trials.parquet gain the columns ``collapsed``, ``collapse_epoch``, ``collapse_kind``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from . import metrics as M
from .errors import EXIT_BAD_INPUT, StudyError

EXPERIMENT = "tune"
DEFAULT_MARGIN = 0.02
ALPHA = 0.05
CURVES = [("train_loss", "train loss (cross-entropy)"), ("val_loss", "val loss (cross-entropy)"),
          ("val_acc", "val accuracy")]
FIG_DPI = 110
MAIN_AXES = ("model", "scheduler", "batch_size")
_TRIAL_DIR = __import__("re").compile(
    r"^(?P<model>.+)_b(?P<batch_size>\d+)_(?P<scheduler>[A-Za-z0-9-]+)(?:_s(?P<seed>\d+))?_[0-9a-f]+_\d+$")
KIND_TEXT = {"never_learned": "never learned (at chance from epoch 1)",
             "collapsed": "collapsed after learning", "non_finite": "non-finite loss"}


def _ok(x) -> bool:
    """A usable scalar: not None / nan / NA."""
    try:
        return not bool(pd.isna(x))
    except (TypeError, ValueError):
        return True


# ----------------------------------------------------------------------------- loading

def _read_study(study_dir: Path) -> tuple[dict, str]:
    """The study's own space.yaml, validated as grid or search; a minimal dict if it no longer
    validates (the report should still come out), or if it is missing."""
    from .config import load_space, read_yaml

    path = study_dir / "space.yaml"
    if not path.exists():
        return {"name": study_dir.name, "description": "", "axes": {}, "fixed": {}, "early_stopping": None,
                "storage_path": None, "path": str(path)}, "grid"
    doc = read_yaml(path)
    order = ["search", "grid"] if ("num_samples" in doc or "search_seed" in doc) else ["grid", "search"]
    for kind in order:
        try:
            return load_space(path, kind=kind), kind
        except StudyError:
            continue
    axes = doc.get("axes") if isinstance(doc.get("axes"), dict) else {}
    fixed = doc.get("fixed") if isinstance(doc.get("fixed"), dict) else {}
    return {"name": doc.get("name", study_dir.name), "description": doc.get("description", ""),
            "axes": axes, "fixed": fixed, "early_stopping": doc.get("early_stopping"),
            "storage_path": doc.get("storage_path"), "path": str(path)}, order[0]


def _tune_dir(study_dir: Path, study: dict) -> Path | None:
    cands = [study_dir / EXPERIMENT]
    storage = study.get("storage_path")
    if isinstance(storage, str) and "://" not in storage:
        cands.append(Path(storage).expanduser() / study.get("name", study_dir.name) / EXPERIMENT)
    for c in cands:
        if c.is_dir():
            return c
    return None


def _newest(tune_dir: Path) -> float:
    files = list(tune_dir.glob("experiment_state-*.json"))
    for pat in ("*/result.json", "*/progress.csv"):
        files += list(tune_dir.glob(pat))
    return max((f.stat().st_mtime for f in files), default=0.0)


def frames_state(study_dir: Path, tune_dir: Path | None) -> str:
    """'fresh', 'missing' (no parquet) or 'stale' (the Ray experiment is newer than the parquet)."""
    pq = [study_dir / f"{n}.parquet" for n in ("trials", "history")]
    if not all(p.exists() for p in pq):
        return "missing"
    if tune_dir is not None and _newest(tune_dir) > min(p.stat().st_mtime for p in pq):
        return "stale"
    return "fresh"


def load_frames(study_dir: Path, study: dict, log=print) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """(trials, history, where from); rebuilds the exports from the Ray experiment when needed."""
    tune_dir = _tune_dir(study_dir, study)
    state = frames_state(study_dir, tune_dir)
    source = "trials.parquet / history.parquet"
    if state != "fresh" and tune_dir is not None:
        try:
            from .results import export, load_result_grid

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                export(load_result_grid(str(tune_dir)), study, study_dir)
            source = f"rebuilt from the Ray experiment in {tune_dir} (the exports were {state})"
            log(f"report: trials/history {state}: rebuilt from {tune_dir}")
        except Exception as e:  # an experiment killed before its first state file, a Ray mismatch
            log(f"report: could not rebuild trials/history from {tune_dir}: {type(e).__name__}: "
                f"{str(e).splitlines()[0][:200] if str(e) else ''}")
    trials = history = None
    for ext, reader in (("parquet", pd.read_parquet), ("csv", pd.read_csv)):
        t, h = study_dir / f"trials.{ext}", study_dir / f"history.{ext}"
        if t.exists() and h.exists():
            try:
                trials, history = reader(t), reader(h)
                if ext == "csv":
                    source = "trials.csv / history.csv"
                break
            except Exception:
                continue
    if trials is None:
        trials, history, source = pd.DataFrame(columns=["trial_id"]), pd.DataFrame(columns=["trial_id", "epoch"]), "none"
    return trials, history, source


# ----------------------------------------------------------------------------- preparing the frames

def _fill_axes(trials: pd.DataFrame, history: pd.DataFrame, study: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every trial gets model / batch_size / scheduler (fixed settings included) and its axis values;
    a trial that had not reported yet gets them from its params.json."""
    from .config import TRAIN_DEFAULTS

    trials, history = trials.copy(), history.copy()
    axes = list(study.get("axes") or {})
    for k in dict.fromkeys([*MAIN_AXES, *axes]):
        if k not in trials.columns:
            trials[k] = study.get("fixed", {}).get(k, TRAIN_DEFAULTS.get(k))
    if "trial_path" in trials.columns:
        for i, row in trials.iterrows():
            missing = [k for k in dict.fromkeys([*MAIN_AXES, *axes]) if pd.isna(row[k])]
            if not missing or not isinstance(row["trial_path"], str):
                continue
            try:
                params = json.loads((Path(row["trial_path"]) / "params.json").read_text())
            except Exception:
                continue
            for k in missing:
                if k in params:
                    trials.at[i, k] = params[k]
    if "trial_path" in trials.columns:  # a trial that never started: its folder name (grid._trial_name)
        for i, row in trials.iterrows():
            m = _TRIAL_DIR.match(Path(str(row["trial_path"])).name)
            if m:
                for k in ("model", "batch_size", "scheduler", "seed"):
                    if k in trials.columns and pd.isna(row[k]) and m.group(k) is not None:
                        trials.at[i, k] = int(m.group(k)) if k in ("batch_size", "seed") else m.group(k)
    for k in ("batch_size", "seed", "best_epoch", "epochs_run", "epochs_planned"):
        if k in trials.columns:
            v = pd.to_numeric(trials[k], errors="coerce")
            if v.notna().any() and (v.dropna() == v.dropna().round()).all():
                trials[k] = v.astype("Int64")
    if len(history):
        history = history.drop(columns=[c for c in history.columns if c in dict.fromkeys([*MAIN_AXES, *axes])],
                               errors="ignore")
        cols = ["trial_id", *[c for c in dict.fromkeys([*MAIN_AXES, *axes]) if c in trials.columns]]
        history = history.merge(trials[cols], on="trial_id", how="left")
        history = (history.dropna(subset=["epoch"]).drop_duplicates(["trial_id", "epoch"], keep="last")
                   .sort_values(["trial_id", "epoch"]).reset_index(drop=True))
    return trials, history


def config_columns(trials: pd.DataFrame, study: dict) -> list[str]:
    """What makes a config: the axes except the seed (and model, scheduler, batch size always)."""
    axes = [a for a in (study.get("axes") or {}) if a != "seed"]
    return [c for c in dict.fromkeys([*MAIN_AXES, *axes]) if c in trials.columns]


def _fmt_val(k, v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return "?"
    if k == "batch_size":
        return f"b{int(v)}"
    if isinstance(v, float):
        return f"{k}={v:.3g}"
    if k in ("model", "scheduler"):
        return str(v)
    return f"{k}={v}"


def config_label(row, cols) -> str:
    return " · ".join(_fmt_val(k, row[k]) for k in cols)


def _n_test(trials: pd.DataFrame) -> int | None:
    ns = []
    for s in trials.get("test_reliability", pd.Series(dtype=object)):
        try:
            bins = json.loads(s) if isinstance(s, str) else s
            n = int(sum(b[2] for b in bins)) if bins is not None and len(bins) else 0
        except Exception:
            n = 0
        if n:
            ns.append(n)
    return max(ns) if ns else None


def data_facts(study: dict, trials: pd.DataFrame) -> dict:
    """Majority-class rate on val, n_val and n_test, as the trials reported them; without those
    columns (an export from before they existed), 0.5 for a stratified split of balanced IMDB."""
    facts = {"majority": 0.5, "majority_source": "assumed: a stratified split of balanced IMDB",
             "n_test": _n_test(trials), "n_val": None}
    if "val_majority_rate" in trials and trials["val_majority_rate"].notna().any():
        facts.update(majority=float(trials["val_majority_rate"].dropna().iloc[0]),
                     majority_source="measured on the val split",
                     n_val=int(trials["n_val"].dropna().iloc[0]),
                     n_test=int(trials["n_test"].dropna().iloc[0]))
    return facts


def annotate_collapse(trials: pd.DataFrame, history: pd.DataFrame, majority: float = 0.5,
                      margin: float = DEFAULT_MARGIN) -> pd.DataFrame:
    """``trials`` with ``collapsed``, ``collapse_epoch`` (nullable int) and ``collapse_kind``."""
    out = trials.copy()
    col, ep, kind = [], [], []
    groups = {k: g for k, g in history.groupby("trial_id")} if len(history) else {}
    for tid in out["trial_id"]:
        h = groups.get(tid)
        c, e, k = M.collapse_info(h, majority, margin) if h is not None else (False, None, "")
        col.append(bool(c))
        ep.append(e)
        kind.append(k)
    out["collapsed"] = pd.Series(col, index=out.index, dtype=bool)
    out["collapse_epoch"] = pd.array(ep, dtype="Int64")
    out["collapse_kind"] = pd.Series(kind, index=out.index, dtype=object)
    return out


def aggregate_configs(trials: pd.DataFrame, cfg_cols: list[str], n_test: int | None,
                      confidence: float = 0.95) -> pd.DataFrame:
    """One row per config: seeds, mean and t-interval half-width (``*_hw``) of test acc / loss /
    ECE / confidence and best val acc; with one seed, test acc's interval is Wilson's on n_test."""
    rows = []
    if not len(trials):
        return pd.DataFrame()
    for key, g in trials.groupby(cfg_cols, dropna=False, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(cfg_cols, key))
        row["label"] = config_label(row, cfg_cols)
        row["trial_ids"] = list(g["trial_id"])
        done = g[g["test_acc"].notna()] if "test_acc" in g else g.iloc[:0]
        row["n"] = len(done)
        for m in ("test_acc", "test_loss", "test_ece", "test_confidence", "best_val_acc", "best_epoch"):
            vals = list(done[m]) if m in done else []
            mean, hw, _ = M.t_interval(vals, confidence)
            row[m], row[f"{m}_hw"], row[f"{m}_values"] = mean, hw, vals
        lo = hi = math.nan
        if row["n"] >= 2 and row["test_acc_hw"] == row["test_acc_hw"]:
            lo, hi = row["test_acc"] - row["test_acc_hw"], row["test_acc"] + row["test_acc_hw"]
            row["ci_kind"] = "t"
        elif row["n"] >= 1 and n_test:
            lo, hi = M.wilson_interval(row["test_acc"] * n_test, n_test, confidence)
            row["ci_kind"] = "wilson"
        else:
            row["ci_kind"] = ""
        row["test_acc_lo"], row["test_acc_hi"] = lo, hi
        row["stopped_early"] = int(g["stopped_early"].fillna(False).astype(bool).sum()) if "stopped_early" in g else 0
        row["collapsed"] = int(g["collapsed"].sum()) if "collapsed" in g else 0
        row["never_learned"] = int((g.get("collapse_kind", pd.Series(dtype=object)) == "never_learned").sum())
        row["epochs_run"] = float(g["epochs_run"].mean()) if "epochs_run" in g else math.nan
        row["optimizer_steps"] = float(g["optimizer_steps"].mean()) if "optimizer_steps" in g else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def differ(a: dict, b: dict, n_test: int | None) -> tuple[bool | None, str]:
    """Do two configs' test accuracies differ beyond noise? Welch's t-test (p < 0.05) with >= 2 seeds
    on both sides, else a Newcombe (Wilson-based) 95% interval of the difference on n_test that
    excludes 0; None when unknown."""
    va, vb = a.get("test_acc_values") or [], b.get("test_acc_values") or []
    if len(va) >= 2 and len(vb) >= 2:
        p = M.welch_t_test(va, vb)
        return (p < ALPHA if p == p else None), f"Welch p = {p:.2g}"
    if not n_test or not _ok(a["test_acc"]) or not _ok(b["test_acc"]):
        return None, ""
    d, lo, hi = M.diff_interval(a["test_acc"] * n_test, n_test, b["test_acc"] * n_test, n_test)
    return (lo > 0 or hi < 0), f"difference {d:+.3f}, 95% CI [{lo:+.3f}, {hi:+.3f}]"


# ----------------------------------------------------------------------------- figures

def _figure(w, h):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=FIG_DPI, layout="constrained")


def batch_colors(batch_sizes) -> dict:
    """A fixed, ordered colour per batch size (viridis over the sorted sizes): same in every figure."""
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    bs = sorted({int(b) for b in batch_sizes if _ok(b)})
    n = len(bs)
    return {b: cmap(0.82 * i / (n - 1) if n > 1 else 0.0) for i, b in enumerate(bs)}


def _panels(trials: pd.DataFrame) -> list[tuple]:
    ps = trials[["model", "scheduler"]].drop_duplicates()
    ps = ps[ps["model"].notna() & ps["scheduler"].notna()]
    return sorted(map(tuple, ps.values.tolist()), key=lambda t: (str(t[0]), str(t[1])))


def _save(fig, path: Path, settle: bool = False) -> Path:
    fig.align_ylabels()
    if settle:  # a first layout pass, so that shared-axis tick labels settle before the real one
        fig.draw_without_rendering()
    fig.savefig(path, dpi=FIG_DPI)
    return path


def _curve(h: pd.DataFrame, xkey: str, ykey: str) -> pd.DataFrame:
    """Mean curve over a config's trials (seeds) with the t-interval half-width per epoch."""
    rows = []
    for ep, d in h.groupby("epoch"):
        mean, hw, n = M.t_interval(list(d[ykey]))
        x = d[xkey].mean() if xkey in d else math.nan
        rows.append({"epoch": ep, "x": x, "y": mean, "hw": hw, "n": n})
    return pd.DataFrame(rows)


def _log_axis(ax):
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}" if x >= 1 else f"{x:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def fig_curves(history, trials, cfg_cols, xkey, xlabel, path, colors, majority, logx=False):
    from matplotlib.lines import Line2D

    panels = _panels(trials)
    if not panels or not len(history):
        return None
    ncol = len(panels)
    fig = _figure(max(12.0, 3.4 * ncol + 1.5), 8.5)
    axs = fig.subplots(len(CURVES), ncol, squeeze=False, sharex="col", sharey="row")
    banded = False
    collapse_marks = stopped_marks = False
    hist = history.merge(trials[["trial_id", "cfg"]], on="trial_id", how="left")
    for j, (model, sched) in enumerate(panels):
        ptrials = trials[(trials["model"] == model) & (trials["scheduler"] == sched)]
        groups = sorted(ptrials.groupby("cfg", sort=False),
                        key=lambda kv: (kv[1]["batch_size"].iloc[0], kv[0]))
        multi = ptrials.groupby("batch_size")["cfg"].nunique().max() > 1 if len(ptrials) else False
        for cfg, g in groups:
            b = g["batch_size"].iloc[0]
            color = colors.get(int(b)) if _ok(b) else "grey"
            h = hist[hist["cfg"] == cfg]
            if not len(h):
                continue
            for i, (ykey, ylabel) in enumerate(CURVES):
                ax = axs[i][j]
                if ykey not in h:
                    continue
                if g["trial_id"].nunique() > 1:
                    c = _curve(h, xkey, ykey).dropna(subset=["x", "y"])
                    ax.plot(c["x"], c["y"], "-o", color=color, ms=4.5, lw=1.6)
                    band = c.dropna(subset=["hw"])
                    if len(band):
                        ax.fill_between(band["x"], band["y"] - band["hw"], band["y"] + band["hw"],
                                        color=color, alpha=0.18, lw=0)
                        banded = True
                else:
                    d = h.dropna(subset=[xkey, ykey]) if xkey in h else h.iloc[:0]
                    ax.plot(d[xkey], d[ykey], "-o", color=color, ms=4.5, lw=1.6 if not multi else 1.0,
                            alpha=1.0 if not multi else 0.7)
            # stopped-early ends and collapse markers
            for t in g.itertuples():
                if getattr(t, "stopped_early", False) is True and xkey in h:
                    d = h[h["trial_id"] == t.trial_id].sort_values("epoch").tail(1)
                    for i, (ykey, _) in enumerate(CURVES):
                        if ykey in d:
                            axs[i][j].plot(d[xkey], d[ykey], "s", mfc="white", mec=color, mew=1.5, ms=7, zorder=4)
                    stopped_marks = True
                if getattr(t, "collapse_kind", "") in ("collapsed", "non_finite") and _ok(t.collapse_epoch):
                    d = h[(h["trial_id"] == t.trial_id) & (h["epoch"] == t.collapse_epoch)]
                    if len(d) and xkey in d:
                        axs[2][j].plot(d[xkey], d["val_acc"], "X", color=color, mec="black", ms=9, zorder=5)
                        collapse_marks = True
        axs[0][j].set_title(f"{model} · {sched}", fontsize=11)
        axs[2][j].axhline(majority, color="grey", ls=":", lw=1)
        axs[-1][j].set_xlabel(xlabel)
        if logx:
            _log_axis(axs[-1][j])
    for i, (_, ylabel) in enumerate(CURVES):
        axs[i][0].set_ylabel(ylabel)
        for ax in axs[i]:
            ax.grid(alpha=0.3)
    if xkey == "epoch":
        from matplotlib.ticker import MaxNLocator

        for ax in axs[-1]:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles = [Line2D([], [], color=c, marker="o", ms=4, lw=1.6, label=f"{b}") for b, c in colors.items()]
    handles.append(Line2D([], [], color="grey", ls=":", label=f"majority class ({majority:.2f})"))
    if banded:
        from matplotlib.patches import Patch

        handles.append(Patch(color="grey", alpha=0.25, label="95% CI over seeds"))
    if stopped_marks:
        handles.append(Line2D([], [], color="grey", marker="s", mfc="white", ms=7, lw=0, label="stopped early"))
    if collapse_marks:
        handles.append(Line2D([], [], color="white", marker="X", mec="black", mfc="lightgrey", ms=9, lw=0,
                              label="collapse epoch"))
    fig.legend(handles=handles, title="batch size", loc="outside right upper", fontsize=9, title_fontsize=9)
    return _save(fig, path, settle=True)


def fig_test_vs_batch(cfgs, path, n_test):
    """Test acc (95% CI), test loss and ECE against batch size, one line per model · scheduler."""
    import matplotlib

    if not len(cfgs) or cfgs["test_acc"].notna().sum() == 0:
        return None
    fig = _figure(12, 4)
    axs = fig.subplots(1, 3)
    cmap = matplotlib.colormaps["tab10"]
    markers = "osD^vP*"
    panels = _panels(cfgs)
    stopped = False
    for k, (model, sched) in enumerate(panels):
        c = cfgs[(cfgs["model"] == model) & (cfgs["scheduler"] == sched) & cfgs["test_acc"].notna()]
        c = c.sort_values("batch_size")
        if not len(c):
            continue
        kw = dict(color=cmap(k % 10), marker=markers[k % len(markers)], ms=5, lw=1.5, capsize=3,
                  label=f"{model} · {sched}")
        x = c["batch_size"].astype(float) * 2 ** (0.06 * (k - (len(panels) - 1) / 2))  # dodge overlaps
        yerr = np.vstack([c["test_acc"] - c["test_acc_lo"], c["test_acc_hi"] - c["test_acc"]])
        axs[0].errorbar(x, c["test_acc"], yerr=np.nan_to_num(yerr), **kw)
        axs[1].errorbar(x, c["test_loss"], yerr=np.nan_to_num(c["test_loss_hw"].to_numpy(float)), **kw)
        axs[2].errorbar(x, c["test_ece"], yerr=np.nan_to_num(c["test_ece_hw"].to_numpy(float)), **kw)
        st = (c["stopped_early"] > 0).to_numpy()
        if st.any():
            stopped = True
            for ax, m in zip(axs, ("test_acc", "test_loss", "test_ece")):
                ax.plot(x[st], c[m][st], ls="", marker=kw["marker"], ms=5, mfc="white", mec=kw["color"], zorder=4)
    bs = sorted(int(b) for b in cfgs["batch_size"].dropna().unique())
    titles = [f"test accuracy (95% CI{', n=' + str(n_test) if n_test else ''})", "test loss (NLL)",
              "test ECE (15 bins)"]
    for ax, t in zip(axs, titles):
        ax.set_xscale("log", base=2)
        ax.set_xticks(bs, [str(b) for b in bs])
        ax.minorticks_off()
        ax.set_xlabel("effective batch size")
        ax.set_title(t, fontsize=11)
        ax.grid(alpha=0.3)
    axs[0].set_ylabel("accuracy")
    axs[1].set_ylabel("cross-entropy")
    axs[2].set_ylabel("expected calibration error")
    handles, labels = axs[0].get_legend_handles_labels()
    if stopped:
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], ls="", marker="o", mfc="white", mec="grey", label="hollow: stopped early"))
        labels.append("hollow: stopped early")
    fig.legend(handles, labels, loc="outside right upper", fontsize=9)
    return _save(fig, path)


def _pooled_bins(reliabilities) -> list[tuple]:
    """Bins of several trials (seeds) pooled: counts summed, confidence and accuracy count-weighted."""
    acc = {}
    for s in reliabilities:
        try:
            bins = json.loads(s) if isinstance(s, str) else s
        except Exception:
            continue
        for lo, hi, n, conf, a in bins or []:
            k = (round(lo, 4), round(hi, 4))
            t = acc.setdefault(k, [0, 0.0, 0.0])
            t[0] += n
            t[1] += n * conf
            t[2] += n * a
    return [(lo, hi, n, c / n, a / n) for (lo, hi), (n, c, a) in sorted(acc.items()) if n]


def fig_reliability(trials, path, colors):
    from matplotlib.lines import Line2D

    panels = _panels(trials)
    if not panels or "test_reliability" not in trials:
        return None
    ncol = min(4, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    fig = _figure(max(12.0, 3.2 * ncol), 4.0 * nrow)
    axs = fig.subplots(nrow, ncol, squeeze=False, sharex=True, sharey=True)
    lo_x = 0.5
    drawn = False
    for k, (model, sched) in enumerate(panels):
        ax = axs[k // ncol][k % ncol]
        p = trials[(trials["model"] == model) & (trials["scheduler"] == sched)]
        handles = []
        for cfg, g in sorted(p.groupby("cfg", sort=False), key=lambda kv: (kv[1]["batch_size"].iloc[0], kv[0])):
            bins = _pooled_bins(g["test_reliability"].dropna())
            if not bins:
                continue
            b = g["batch_size"].iloc[0]
            n = sum(x[2] for x in bins)
            conf = [x[3] for x in bins]
            acc = [x[4] for x in bins]
            lo_x = min(lo_x, min(x[0] for x in bins))
            ece = sum(x[2] / n * abs(x[4] - x[3]) for x in bins)
            color = colors.get(int(b), "grey") if _ok(b) else "grey"
            ax.plot(conf, acc, "-", color=color, lw=1.4, alpha=0.9)
            ax.scatter(conf, acc, s=[12 + 140 * x[2] / n for x in bins], color=color, edgecolor="white",
                       lw=0.5, zorder=3)
            handles.append(Line2D([], [], color=color, marker="o", ms=6, lw=1.4,
                                  label=f"b{int(b)}: ECE {ece:.3f}" + (f" ({len(g)} seeds)" if len(g) > 1 else "")))
            drawn = True
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
        ax.set_title(f"{model} · {sched}", fontsize=11)
        ax.grid(alpha=0.3)
        if handles:
            ax.legend(handles=handles, fontsize=8, loc="lower right")
    if not drawn:
        return None
    for ax in axs.flat[len(panels):]:
        ax.set_visible(False)
    for ax in axs[-1]:
        ax.set_xlabel("mean confidence (top-class probability) in bin")
    for row in axs:
        row[0].set_ylabel("accuracy in bin")
    axs[0][0].set_xlim(max(0.0, lo_x - 0.02), 1.01)
    axs[0][0].set_ylim(-0.02, 1.02)
    fig.legend(handles=[Line2D([], [], ls="--", color="grey", label="perfect calibration"),
                        Line2D([], [], ls="", marker="o", color="grey", label="marker area ~ examples in bin")],
               loc="outside lower center", ncol=2, fontsize=9)
    return _save(fig, path)


def fig_search_history(trials, path):
    import matplotlib

    t = trials[trials["best_val_acc"].notna()].sort_values("trial_id").reset_index(drop=True)
    if not len(t):
        return None
    fig = _figure(12, 4)
    ax = fig.subplots()
    order = np.arange(1, len(t) + 1)
    cmap = matplotlib.colormaps["tab10"]
    for k, m in enumerate(sorted(t["model"].astype(str).unique())):
        sel = t["model"].astype(str) == m
        ax.scatter(order[sel], t.loc[sel, "best_val_acc"], color=cmap(k), s=36, label=f"{m}: best val acc")
        ax.scatter(order[sel], t.loc[sel, "test_acc"], color=cmap(k), s=36, marker="x",
                   label=f"{m}: test acc (best-val weights)")
    ax.step(order, t["best_val_acc"].cummax(), where="post", color="black", lw=1.5, label="running best val acc")
    ax.set_xlabel("trial (in order of creation)")
    ax.set_ylabel("accuracy")
    ax.set_title("search history", fontsize=11)
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=9)
    return _save(fig, path)


# ----------------------------------------------------------------------------- analyses

def _fmt(x, nd=3) -> str:
    return f"{x:.{nd}f}" if _ok(x) else "–"


def step_matched(history: pd.DataFrame, cfgs: pd.DataFrame, majority: float, n_val: int | None) -> list[dict]:
    """Per model · scheduler, each pair of adjacent batch sizes: val acc at matched samples (the
    larger batch's last evaluation) and at matched optimizer steps (the larger batch's final step
    count, where the smaller batch's curve is interpolated linearly in steps, anchored at the
    majority-class rate at step 0 if its first evaluation comes later)."""
    out = []
    if not len(history) or not len(cfgs):
        return out
    for (model, sched), p in cfgs.groupby(["model", "scheduler"], sort=True):
        if p["batch_size"].duplicated().any():  # a search: several configs per batch size
            continue
        p = p.sort_values("batch_size")
        curves = {}
        for r in p.itertuples():
            h = history[history["trial_id"].isin(r.trial_ids)]
            if not len(h):
                continue
            c = h.groupby("epoch").agg(steps=("optimizer_steps", "mean"), samples=("samples_seen", "mean"),
                                       acc=("val_acc", "mean")).reset_index().dropna()
            if len(c):
                curves[int(r.batch_size)] = c
        bs = sorted(curves)
        for small, large in zip(bs, bs[1:]):
            cs, cl = curves[small], curves[large]
            # the furthest point both curves reach: in steps and in samples
            S = float(min(cs["steps"].max(), cl["steps"].max()))
            N = float(min(cs["samples"].max(), cl["samples"].max()))
            ls_, anch_l = _curve_at(cl, "steps", S, majority)
            ss_, anch_s = _curve_at(cs, "steps", S, majority)
            ln_, _ = _curve_at(cl, "samples", N, majority)
            sn_, _ = _curve_at(cs, "samples", N, majority)
            ep = cl.loc[cl["samples"] <= N + 1e-9, "epoch"]
            out.append({"model": model, "scheduler": sched, "small": small, "large": large,
                        "steps": S, "samples": N, "epoch": int(ep.iloc[-1]) if len(ep) else None,
                        "acc_large_at_steps": ls_, "acc_small_at_steps": ss_,
                        "acc_large_at_samples": ln_, "acc_small_at_samples": sn_,
                        "anchored": [b for b, a in ((small, anch_s), (large, anch_l)) if a],
                        "first_steps": {small: float(cs["steps"].iloc[0]), large: float(cl["steps"].iloc[0])},
                        "beyond_noise_steps": _val_differ(ls_, ss_, n_val),
                        "beyond_noise_samples": _val_differ(ln_, sn_, n_val),
                        "never_learned": bool(max(cs["acc"].max(), cl["acc"].max()) <= majority + DEFAULT_MARGIN)})
    return out


def _curve_at(c: pd.DataFrame, xkey: str, x: float, majority: float) -> tuple[float, bool]:
    """val acc of a per-epoch curve at ``x`` (linear interpolation); before the first evaluation the
    curve starts from the majority-class rate at 0 (flagged True)."""
    if x < c[xkey].iloc[0]:
        return M.interp_at([0.0, *c[xkey]], [majority, *c["acc"]], x), True
    return M.interp_at(c[xkey], c["acc"], x), False


def _val_differ(a, b, n):
    if a != a or b != b or not n:
        return None
    _, lo, hi = M.diff_interval(a * n, n, b * n, n)
    return bool(lo > 0 or hi < 0)


V_FEWER = "fewer steps: behind at matched samples, not behind at matched steps"
V_ITSELF = "batch size itself: behind even at matched steps"
V_PER_STEP = "level at matched samples and ahead at matched steps: each large-batch step does more"
V_AHEAD = "larger batch ahead at matched samples"
V_LEVEL = "no difference beyond noise"


def _step_verdict(r: dict) -> str:
    d_samples = r["acc_large_at_samples"] - r["acc_small_at_samples"]
    d_steps = r["acc_large_at_steps"] - r["acc_small_at_steps"]
    worse_samples = d_samples < 0 and r["beyond_noise_samples"]
    worse_steps = d_steps < 0 and r["beyond_noise_steps"]
    if r.get("never_learned"):
        return "neither batch size learned: nothing to attribute"
    if d_steps != d_steps or d_samples != d_samples:
        return "no matched comparison"
    if worse_steps:
        return V_ITSELF
    if worse_samples:
        return V_FEWER
    if d_samples > 0 and r["beyond_noise_samples"]:
        return V_AHEAD
    if d_steps > 0 and r["beyond_noise_steps"]:
        return V_PER_STEP
    return V_LEVEL


def _steps_per_epoch(trials):
    t = trials[(trials["epochs_run"] > 0) & trials["optimizer_steps"].notna()] if "epochs_run" in trials else trials.iloc[:0]
    return {int(b): int(round(g["optimizer_steps"].iloc[0] / g["epochs_run"].iloc[0]))
            for b, g in t.groupby("batch_size")} if len(t) else {}


# ----------------------------------------------------------------------------- markdown

def md_table(df: pd.DataFrame) -> str:
    if not len(df):
        return "(none)"
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(str(r[c]).replace("|", "/") for c in cols) + " |")
    return "\n".join(lines)


def _acc_ci(r) -> str:
    if not _ok(r.get("test_acc")):
        return "–"
    lo, hi = r.get("test_acc_lo"), r.get("test_acc_hi")
    return f"{r['test_acc']:.3f} [{_fmt(lo)}, {_fmt(hi)}]" if _ok(lo) else f"{r['test_acc']:.3f}"


def _pm(m, hw, nd=3):
    if not _ok(m):
        return "–"
    return f"{m:.{nd}f} ± {hw:.{nd}f}" if _ok(hw) else f"{m:.{nd}f}"


def _collapse_text(r) -> str:
    if not r.get("collapsed"):
        return "no"
    return f"{KIND_TEXT.get(r.get('collapse_kind'), 'yes')}, epoch {r.get('collapse_epoch')}"


# ----------------------------------------------------------------------------- the report

def build_report(study_dir, margin: float = DEFAULT_MARGIN, log=print, figures: bool = True) -> Path:
    """Write report.md, figures and test_table.csv into ``study_dir``; returns report.md's path.

    Rebuilds trials/history from the Ray experiment in ``study_dir/tune`` when they are missing or
    older than it; adds ``collapsed`` / ``collapse_epoch`` / ``collapse_kind`` to trials.csv/.parquet.
    ``margin``: the val-acc band around the majority-class rate that counts as collapsed.
    Raises StudyError when ``study_dir`` is not a study folder.
    """
    study_dir = Path(study_dir).expanduser()
    if not study_dir.is_dir():
        raise StudyError(f"report: no study folder at {study_dir}")
    markers = [study_dir / "space.yaml", study_dir / "trials.parquet", study_dir / "trials.csv", study_dir / EXPERIMENT]
    if not any(p.exists() for p in markers):
        raise StudyError(f"report: {study_dir} is not a study folder (no space.yaml, trials.parquet or {EXPERIMENT}/)")
    study, kind = _read_study(study_dir)
    raw_trials, history, source = load_frames(study_dir, study, log=log)
    if "trial_id" not in raw_trials.columns:
        raw_trials["trial_id"] = []
    trials, history = _fill_axes(raw_trials, history, study)
    facts = data_facts(study, trials)
    majority, n_test, n_val = facts["majority"], facts["n_test"], facts["n_val"] or facts["n_test"]

    # collapse flags: into trials.csv / .parquet too
    flagged = annotate_collapse(trials, history, majority, margin)
    if len(raw_trials):
        upd = raw_trials.drop(columns=["collapsed", "collapse_epoch", "collapse_kind"], errors="ignore").copy()
        for c in ("collapsed", "collapse_epoch", "collapse_kind"):
            upd[c] = flagged[c].values
        upd.to_csv(study_dir / "trials.csv", index=False)
        upd.to_parquet(study_dir / "trials.parquet", index=False)
    trials = flagged
    for c, default in (("test_acc", math.nan), ("best_val_acc", math.nan), ("test_loss", math.nan),
                       ("test_ece", math.nan), ("test_confidence", math.nan), ("best_epoch", math.nan),
                       ("stopped_early", False), ("status", ""), ("epochs_run", 0), ("optimizer_steps", math.nan),
                       ("samples_seen", math.nan), ("epochs_planned", math.nan), ("test_reliability", "[]")):
        if c not in trials:
            trials[c] = default
    for c in ("test_acc", "best_val_acc", "test_loss", "test_ece", "test_confidence", "best_epoch"):
        trials[c] = pd.to_numeric(trials[c], errors="coerce")

    cfg_cols = config_columns(trials, study)
    trials["cfg"] = [config_label(r, cfg_cols) for _, r in trials.iterrows()] if len(trials) else []
    seeds = "seed" in trials and len(trials) and trials.groupby("cfg")["seed"].nunique().max() > 1
    cfgs = aggregate_configs(trials, cfg_cols, n_test)

    # ---- tables
    tt = trials.copy()
    if n_test and len(tt):
        ci = [M.wilson_interval(a * n_test, n_test) if _ok(a) else (math.nan, math.nan) for a in tt["test_acc"]]
        tt["test_acc_lo"], tt["test_acc_hi"] = [c[0] for c in ci], [c[1] for c in ci]
    else:
        tt["test_acc_lo"] = tt["test_acc_hi"] = math.nan
    axes_cols = [c for c in dict.fromkeys([*cfg_cols, *(["seed"] if "seed" in (study.get("axes") or {}) else [])])
                 if c in tt]
    table_cols = ["trial_id", *axes_cols, "status", "epochs_run", "epochs_planned", "stopped_early", "best_epoch",
                  "best_val_acc", "test_acc", "test_acc_lo", "test_acc_hi", "test_loss", "test_nll", "test_ece",
                  "test_confidence", "optimizer_steps", "samples_seen", "collapsed", "collapse_epoch", "collapse_kind"]
    table = tt[[c for c in table_cols if c in tt]]
    table.to_csv(study_dir / "test_table.csv", index=False)
    if seeds:
        agg = cfgs[[*cfg_cols, "n", "test_acc", "test_acc_hw", "test_loss", "test_loss_hw", "test_ece", "test_ece_hw",
                    "test_confidence", "test_confidence_hw", "best_val_acc", "best_val_acc_hw", "best_epoch",
                    "stopped_early", "collapsed"]]
        agg.to_csv(study_dir / "test_table_by_config.csv", index=False)

    # ---- figures
    figs = {}
    colors = batch_colors(trials["batch_size"].dropna()) if len(trials) else {}
    if not figures:
        pass
    elif len(history) and len(trials):
        for name, xkey, xlabel, logx in (("epoch", "epoch", "epoch", False),
                                         ("steps", "optimizer_steps", "optimizer steps (log scale)", True),
                                         ("samples", "samples_seen", "training samples seen", False)):
            if xkey in history:
                p = fig_curves(history, trials, cfg_cols, xkey, xlabel, study_dir / f"fig_curves_{name}.png",
                               colors, majority, logx=logx)
                if p:
                    figs[name] = p.name
    if figures and kind == "grid" and len(cfgs):
        p = fig_test_vs_batch(cfgs, study_dir / "fig_test_vs_batch.png", n_test)
        if p:
            figs["test"] = p.name
    if figures and len(trials):
        p = fig_reliability(trials, study_dir / "fig_reliability.png", colors)
        if p:
            figs["reliability"] = p.name
    if figures and kind == "search" and len(trials):
        p = fig_search_history(trials, study_dir / "fig_search_history.png")
        if p:
            figs["search"] = p.name

    text = _markdown(study, kind, study_dir, source, trials, history, cfgs, cfg_cols, bool(seeds), facts,
                     n_val, margin, figs, table)
    out = study_dir / "report.md"
    out.write_text(text)
    return out


def _markdown(study, kind, study_dir, source, trials, history, cfgs, cfg_cols, seeds, facts, n_val, margin,
              figs, table) -> str:
    majority, n_test = facts["majority"], facts["n_test"]
    L = [f"# Study report: {study.get('name', study_dir.name)}", ""]
    if study.get("description"):
        L += [f"{study['description']}", ""]
    status = trials["status"].value_counts().to_dict() if len(trials) else {}
    fixed = study.get("fixed") or {}
    fx = ", ".join(f"{k} {fixed[k]}" for k in ("lr", "epochs", "max_len", "precision") if k in fixed)
    nval_txt = f", n_val = {facts['n_val']}" if facts.get("n_val") else ""
    L += [f"- Study: {kind}{' (Optuna search)' if kind == 'search' else ''} over "
          f"{', '.join(study.get('axes') or {}) or '?'}; {fx}.",
          f"- Trials: {len(trials)} ({', '.join(f'{v} {k}' for k, v in status.items()) or 'none'}); "
          f"data from {source}.",
          f"- Test set: n_test = {n_test or '?'} (sum of the reliability-bin counts); "
          f"majority-class rate {majority:.3f} ({facts['majority_source']})" + nval_txt + ".", ""]
    unfinished = trials[~trials["status"].isin(["TERMINATED", "ERROR"])] if len(trials) else trials
    if len(unfinished):
        L += [f"**Interrupted study**: {len(unfinished)} trial(s) never finished "
              f"({', '.join(sorted(set(map(str, unfinished['status']))))}); this report covers what they reported.", ""]
    errors = trials[trials["status"] == "ERROR"] if len(trials) else trials
    if len(errors):
        L += ["**Errored trials**: " + "; ".join(f"{r.cfg} ({r.trial_id}): {getattr(r, 'error', '') or 'error'}"
                                                for r in errors.itertuples()), ""]
    done = cfgs[cfgs["n"] > 0] if len(cfgs) else cfgs
    if not len(done):
        L += ["No trial has reported a test result yet: nothing to report.", ""]
        return "\n".join(L)

    # ---------------------------------------------------------------- findings
    L += ["## Findings", ""]
    L += _findings_main(trials, done, cfg_cols, seeds, n_test, kind)
    L += _findings_noise(trials, done, seeds, n_test)
    L += _findings_calibration(done, n_test)
    sm = step_matched(history, done, majority, n_val) if kind == "grid" else []
    L += _asha_note(trials)
    L += ["", "### The seed's three questions", ""]
    L += _q_collapse(trials, seeds, majority, margin, n_val)
    L += _q_loss_vs_acc(trials, history, done, n_test)
    L += _q_steps(sm, done, n_val, kind)

    # ---------------------------------------------------------------- figures and tables
    L += ["", "## Training curves", ""]
    if "epoch" in figs:
        L += ["The seed's figures: train loss, val loss and val accuracy per epoch; one line per batch size "
              "(same colour in every figure), one column per model · scheduler"
              + ("; shaded: 95% t-interval over seeds" if seeds else "")
              + "; the dotted line is the majority-class rate; ✕ marks a collapse.", "",
              f"![curves per epoch]({figs['epoch']})", ""]
    if "steps" in figs or "samples" in figs:
        spe = _steps_per_epoch(trials)
        spe_t = ", ".join(f"batch {b}: {s}" for b, s in sorted(spe.items()))
        L += ["### Step-matched view", "",
              f"The same curves against optimizer steps (log scale) and against training samples seen. "
              f"Optimizer steps per epoch: {spe_t}. At equal samples (equal epochs) a larger batch has taken "
              f"proportionally fewer steps; read across the step plot to compare batch sizes at equal steps.", ""]
        for k in ("steps", "samples"):
            if k in figs:
                L += [f"![curves against {k}]({figs[k]})", ""]
    L += ["## Test results", "",
          "Test loss and accuracy of each trial's best-val weights (the epoch with the best val accuracy, "
          "val loss breaking ties). "
          + (f"Accuracy intervals: Wilson 95% on n_test = {n_test}. " if n_test else "")
          + "Also in [test_table.csv](test_table.csv).", ""]
    if seeds:
        agg = pd.DataFrame({
            "config": done["label"], "seeds": done["n"],
            "test acc (mean ± 95% CI)": [_pm(m, h) for m, h in zip(done["test_acc"], done["test_acc_hw"])],
            "test loss": [_pm(m, h) for m, h in zip(done["test_loss"], done["test_loss_hw"])],
            "ECE": [_pm(m, h) for m, h in zip(done["test_ece"], done["test_ece_hw"])],
            "confidence": [_fmt(x) for x in done["test_confidence"]],
            "best epoch (mean)": [_fmt(x, 1) for x in done["best_epoch"]],
            "stopped early": done["stopped_early"], "collapsed": done["collapsed"]})
        L += ["Per config, mean ± half-width of the 95% t-interval over seeds "
              "(also in [test_table_by_config.csv](test_table_by_config.csv)):", "", md_table(agg), "",
              "Per trial:", ""]
    rows = table.sort_values([c for c in cfg_cols if c in table] + (["seed"] if "seed" in table else []))
    md = pd.DataFrame({
        "config": [trials.set_index("trial_id").loc[t, "cfg"] for t in rows["trial_id"]],
        **({"seed": rows["seed"]} if "seed" in rows and seeds else {}),
        "status": rows["status"],
        "epochs": [f"{int(a)}/{int(b)}" if _ok(a) and _ok(b) else "–" for a, b in zip(rows["epochs_run"], rows["epochs_planned"])],
        "stopped early": ["yes" if s else "no" for s in rows["stopped_early"].fillna(False)],
        "best epoch": [str(int(e)) if _ok(e) else "–" for e in rows["best_epoch"]],
        "best val acc": [_fmt(x) for x in rows["best_val_acc"]],
        "test acc [95% CI]": [_acc_ci(r) for _, r in rows.iterrows()],
        "test loss": [_fmt(x) for x in rows["test_loss"]],
        "ECE": [_fmt(x) for x in rows["test_ece"]],
        "confidence": [_fmt(x) for x in rows["test_confidence"]],
        "collapsed": [_collapse_text(r) for _, r in rows.iterrows()]})
    L += [md_table(md), ""]
    if "test" in figs:
        L += [f"![test metrics against batch size]({figs['test']})", ""]
    L += ["## Calibration", "",
          "Reliability diagrams of the best-val weights on test: accuracy against mean confidence per "
          "confidence bin (15 equal-width bins); points below the diagonal are over-confident, above it "
          "under-confident. ECE = Σ_b |B_b|/N · |acc(B_b) − conf(B_b)|.", ""]
    if "reliability" in figs:
        L += [f"![reliability diagrams]({figs['reliability']})", ""]
    if kind == "search":
        L += _search_section(trials, done, cfg_cols, figs)
    L += ["## Rules used", "",
          f"- **Collapse**: a trial is flagged when its val accuracy stays within ±{margin} of the majority-class "
          f"rate ({majority:.3f}, what predicting one class scores) from some epoch through its last epoch, or "
          f"when a loss is non-finite. The epoch is the first of that final run. `collapse_kind`: "
          f"`collapsed` (it had left the band before), `never_learned` (in the band from epoch 1: a model that "
          f"never learned, e.g. a tiny random model, not a divergence), `non_finite`. Columns `collapsed`, "
          f"`collapse_epoch`, `collapse_kind` are in trials.csv/parquet and test_table.csv.",
          "- **Noise**: " + (
              "two configs differ beyond noise when Welch's t-test on their per-seed test accuracies gives "
              "p < 0.05; intervals are mean ± t(0.975, n−1)·s/√n. "
              if seeds else "")
          + (f"with one run per config, accuracies carry Wilson 95% intervals on n_test = {n_test}, and two "
             f"accuracies differ beyond sampling noise when the 95% interval of their difference (Newcombe's "
             f"hybrid score interval, built from the two Wilson intervals) excludes 0. Both models are scored on "
             f"the same test reviews, so this unpaired rule is conservative; a paired McNemar test would need "
             f"per-example predictions, which are not stored. Run-to-run (seed) variance is not in these "
             f"intervals; add a `seed` axis to measure it." if n_test else ""),
          "- **Step matching**: for adjacent batch sizes b < B of one model · scheduler, val accuracy "
          "(mean over seeds) is compared at the furthest number of samples both reached (an epoch end for "
          "both) and at the furthest number of optimizer steps both reached, interpolating linearly between "
          "evaluations. Where that step count comes before a curve's first evaluation, the curve starts from "
          "the majority-class rate at step 0 (an untrained head); that under-estimates a concave learning "
          "curve, i.e. favours the other batch size. Differences are beyond noise when the Newcombe 95% "
          f"interval of the difference on n_val = {n_val or '?'} excludes 0.", ""]
    return "\n".join(L)


# ----------------------------------------------------------------------------- findings

def _best_line(done, n_test, kind):
    L = []
    by_val = done.sort_values(["best_val_acc", "test_acc"], ascending=False, na_position="last")
    by_test = done.sort_values(["test_acc", "best_val_acc"], ascending=False, na_position="last")
    bv, bt = by_val.iloc[0], by_test.iloc[0]
    L.append(f"- **Best config** by val accuracy (the selection criterion): **{bv['label']}** — val "
             f"{_fmt(bv['best_val_acc'])}, test {_acc_ci(bv)}, test loss {_fmt(bv['test_loss'])}.")
    if bt["label"] != bv["label"]:
        L.append(f"  By test accuracy: **{bt['label']}** — test {_acc_ci(bt)}, val {_fmt(bt['best_val_acc'])}.")
    if len(by_test) > 1:
        second = by_test.iloc[1]
        d, how = differ(bt.to_dict(), second.to_dict(), n_test)
        verdict = {True: "beyond noise", False: "within noise", None: "undetermined"}[d]
        L.append(f"  The top two by test accuracy, {bt['label']} ({_fmt(bt['test_acc'])}) and {second['label']} "
                 f"({_fmt(second['test_acc'])}), differ by {abs(bt['test_acc'] - second['test_acc']):.3f}: "
                 f"{verdict}{f' ({how})' if how else ''}.")
    return L


def _findings_main(trials, done, cfg_cols, seeds, n_test, kind):
    L = _best_line(done, n_test, kind)
    if kind != "grid":
        return L
    for (model, sched), p in done.groupby(["model", "scheduler"], sort=True):
        p = p.sort_values(["test_acc", "best_val_acc"], ascending=False).reset_index(drop=True)
        if p["batch_size"].nunique() < 2:
            continue
        parts = [f"{int(p.loc[0, 'batch_size'])} ({_fmt(p.loc[0, 'test_acc'])})"]
        for i in range(1, len(p)):
            d, _ = differ(p.loc[i - 1].to_dict(), p.loc[i].to_dict(), n_test)
            parts.append(("≈" if d is False else ">") + f" {int(p.loc[i, 'batch_size'])} ({_fmt(p.loc[i, 'test_acc'])})")
        first, last = p.iloc[0], p.iloc[-1]
        d, how = differ(first.to_dict(), last.to_dict(), n_test)
        span = {True: "beyond noise", False: "within noise", None: "undetermined"}[d]
        L.append(f"- **Batch-size ordering** by test accuracy, {model} · {sched}: batch " + " ".join(parts)
                 + f" (> beyond noise, ≈ within noise). Best vs worst batch: {span}.")
    return L


def _findings_noise(trials, done, seeds, n_test):
    L = []
    if seeds:
        pairs = within = 0
        rows = done.to_dict("records")
        for i in range(len(rows)):
            for j in range(i + 1, len(rows)):
                d, _ = differ(rows[i], rows[j], n_test)
                if d is not None:
                    pairs += 1
                    within += not d
        hw = done["test_acc_hw"].dropna()
        L.append(f"- **Noise**: over seeds, test accuracy's 95% half-width is {_fmt(hw.median())} (median over "
                 f"configs); {within} of {pairs} config pairs are within noise (Welch p ≥ 0.05).")
    elif n_test:
        acc = done["test_acc"].dropna()
        lo, hi = M.wilson_interval(acc.median() * n_test, n_test)
        rows = done.to_dict("records")
        pairs = within = 0
        for i in range(len(rows)):
            for j in range(i + 1, len(rows)):
                d, _ = differ(rows[i], rows[j], n_test)
                if d is not None:
                    pairs += 1
                    within += not d
        L.append(f"- **Noise**: one run per config; with n_test = {n_test} a test accuracy of {acc.median():.3f} "
                 f"carries a Wilson 95% interval [{lo:.3f}, {hi:.3f}] (±{(hi - lo) / 2:.3f}). {within} of {pairs} "
                 f"pairs of configs are within sampling noise of each other (rule below).")
    return L


def _findings_calibration(done, n_test):
    L = []
    d = done.dropna(subset=["test_acc", "test_confidence"])
    if not len(d):
        return L
    d = d.assign(gap=d["test_confidence"] - d["test_acc"])
    tol = {}
    for r in d.itertuples():
        if n_test:
            lo, hi = M.wilson_interval(r.test_acc * n_test, n_test)
            tol[r.label] = (hi - lo) / 2
        else:
            tol[r.label] = 0.0
    over = d[[g > tol[lab] for g, lab in zip(d["gap"], d["label"])]].sort_values("gap", ascending=False)
    under = d[[g < -tol[lab] for g, lab in zip(d["gap"], d["label"])]].sort_values("gap")
    desc = lambda r: f"{r.label} (confidence {r.test_confidence:.3f} vs accuracy {r.test_acc:.3f}, ECE {_fmt(r.test_ece)})"
    s = "- **Calibration** (mean confidence vs accuracy of the best-val weights on test): "
    if len(over):
        s += f"over-confident beyond the accuracy's sampling noise: {'; '.join(desc(r) for r in over.itertuples())}. "
    if len(under):
        s += f"Under-confident: {'; '.join(desc(r) for r in under.itertuples())}. "
    if not len(over) and not len(under):
        s += "no config's mean confidence is further from its accuracy than the accuracy's 95% interval. "
    e = d.dropna(subset=["test_ece"]).sort_values("test_ece")
    if len(e) > 1:
        s += f"Best calibrated: {e.iloc[0]['label']} (ECE {e.iloc[0]['test_ece']:.3f}); worst: {e.iloc[-1]['label']} " \
             f"(ECE {e.iloc[-1]['test_ece']:.3f})."
    L.append(s.rstrip())
    if d["scheduler"].nunique() > 1:
        parts = []
        for sched, g in d.groupby("scheduler"):
            parts.append(f"{sched}: acc {g['test_acc'].mean():.3f}, confidence {g['test_confidence'].mean():.3f}, "
                         f"ECE {g['test_ece'].mean():.3f}, test loss {g['test_loss'].mean():.3f}")
        L.append("  Per scheduler (mean over configs): " + "; ".join(parts) + ".")
    return L


def _asha_note(trials):
    if "stopped_early" not in trials or not trials["stopped_early"].fillna(False).astype(bool).any():
        return []
    st = trials[trials["stopped_early"].fillna(False).astype(bool)]
    kept = trials[~trials["stopped_early"].fillna(False).astype(bool)]
    spe = _steps_per_epoch(trials)
    s = (f"- **Early stopping (ASHA)**: {len(st)} of {len(trials)} trials were stopped early: "
         + ", ".join(f"{r.cfg} after epoch {r.epochs_run}" for r in st.itertuples()) + ". ")
    if len(kept) and st["batch_size"].notna().any():
        share = lambda df: ", ".join(f"{int(b)}: {k}/{int((trials['batch_size'] == b).sum())}"
                                     for b, k in df.groupby("batch_size").size().items())
        s += f"Stopped trials per batch size: {share(st)}. "
    ep = trials.groupby("batch_size")["epochs_run"].mean().dropna()
    if len(ep) > 1:
        s += "Mean epochs run per batch size: " + ", ".join(f"{int(b)}: {e:.1f}" for b, e in ep.items()) + ". "
    if len(spe) > 1:
        lo, hi = min(spe), max(spe)
        s += (f"ASHA compares trials at equal epochs, when batch {hi} has taken {spe[hi]} optimizer steps per epoch "
              f"against {spe[lo]} for batch {lo}; so large batches get pruned first for taking fewer steps, not "
              f"for their batch size")
        if len(ep) > 1 and ep.loc[max(ep.index)] <= ep.min():
            s += f" — as here, where batch {int(max(ep.index))} ran the fewest epochs. "
        else:
            s += ". "
        s += "Stopped trials report the test numbers of their best-val weights up to the stop."
    return [s]


def _q_collapse(trials, seeds, majority, margin, n_val):
    L = []
    col = trials[trials["collapse_kind"] == "collapsed"]
    nf = trials[trials["collapse_kind"] == "non_finite"]
    never = trials[trials["collapse_kind"] == "never_learned"]
    head = "**(a) Is a collapse to ~0.5 accuracy real or chance?** "
    learned = trials[trials["collapse_kind"] != "never_learned"]
    if not len(col) and not len(nf) and len(never) and not len(learned):
        s = (head + f"Nothing to judge: no trial ever left the {majority:.2f} ± {margin} band (none learned), "
             "so none could collapse after learning.")
    elif not len(col) and not len(nf):
        s = (head + f"No trial collapsed after learning: every trial whose val accuracy left the "
             f"{majority:.2f} ± {margin} band stayed out of it through its last epoch, and no loss was non-finite. "
             "The seed's RoBERTa collapse did not recur in this study.")
    else:
        items = []
        for r in pd.concat([col, nf]).itertuples():
            h = f"{r.cfg}" + (f" seed {r.seed}" if seeds and hasattr(r, "seed") else "")
            items.append(f"{h} at epoch {r.collapse_epoch} ({KIND_TEXT[r.collapse_kind]}; best val "
                         f"{_fmt(r.best_val_acc)} at epoch {r.best_epoch} before it)")
        s = head + f"{len(col) + len(nf)} trial(s) collapsed: " + "; ".join(items) + ". "
        if n_val and len(col):
            from scipy import stats

            probs = []
            for r in col.itertuples():
                p = float(r.best_val_acc)
                k = int(r.epochs_run) - int(r.collapse_epoch) + 1
                lo_k, hi_k = math.ceil((majority - margin) * n_val - 1e-9), math.floor((majority + margin) * n_val + 1e-9)
                one = float(stats.binom.cdf(hi_k, n_val, p) - stats.binom.cdf(lo_k - 1, n_val, p))
                probs.append((r, one ** max(k, 1), k))
            r, pr, k = max(probs, key=lambda t: t[1])
            s += ("Real, not chance" if pr < ALPHA else "Possibly chance") + (
                  f": predicting one class scores exactly the majority rate, while a model that had "
                  f"kept its best val accuracy ({r.best_val_acc:.3f}) would score within ±{margin} of "
                  f"{majority:.2f} on n_val = {n_val} at {k} epoch(s) in a row with probability {pr:.1e} "
                  f"(binomial){' — the largest such probability among the flagged trials' if len(probs) > 1 else ''}. ")
        if seeds and "seed" in trials:
            for cfg in sorted(set(col["cfg"]) | set(nf["cfg"])):
                g = trials[trials["cfg"] == cfg]
                k = int(g["collapse_kind"].isin(["collapsed", "non_finite"]).sum())
                s += f"{cfg}: collapsed in {k} of {len(g)} seeds. "
        else:
            s += "With one seed per config, whether it recurs for that config is unknown: add a `seed` axis. "
    if len(never):
        s += (f" {len(never)} trial(s) never learned (val accuracy within ±{margin} of {majority:.2f} from epoch 1 "
              f"through their last epoch): " + ", ".join(sorted(set(never["cfg"]))) + "; that is a model that "
              "did not train (too few steps, a random tiny model), not a collapse after learning.")
    L.append("- " + s.strip())
    return L


def _q_loss_vs_acc(trials, history, done, n_test):
    head = "**(b) Why did test loss rise while accuracy rose?** "
    d = done.dropna(subset=["test_acc", "test_loss"])
    d = d[d["never_learned"] < d["n"]]
    if len(d) < 2:
        return ["- " + head + "Too few configs with test results to compare."]
    rows = d.to_dict("records")
    best = None
    for a in rows:
        for b in rows:
            if a["test_acc"] > b["test_acc"] and a["test_loss"] > b["test_loss"]:
                same = a.get("model") == b.get("model")
                key = (bool(differ(a, b, n_test)[0]), same, a["test_loss"] - b["test_loss"])
                if best is None or key > best[0]:
                    best = (key, a, b)
    from scipy import stats

    rho = stats.spearmanr(d["test_acc"], d["test_loss"]).statistic if d["test_acc"].nunique() > 1 else math.nan
    s = head
    trend = ("test loss mostly falls as accuracy rises" if rho < -0.3 else
             "test loss mostly rises with accuracy" if rho > 0.3 else "test loss and accuracy are barely related")
    s += f"Across {len(d)} configs {trend} (Spearman ρ = {rho:.2f}). "
    if best is None:
        s += "No config has both higher test accuracy and higher test loss than another. "
    else:
        _, a, b = best
        n_pairs = sum(1 for x in rows for y in rows if x["test_acc"] > y["test_acc"] and x["test_loss"] > y["test_loss"])
        dd, how = differ(a, b, n_test)
        s += (f"{n_pairs} config pair(s) have higher test accuracy together with higher test loss; the clearest: "
              f"{a['label']} has accuracy {a['test_acc']:.3f} vs {b['test_acc']:.3f} for {b['label']} "
              f"({'beyond' if dd else 'within' if dd is False else 'undetermined'} noise), yet test loss "
              f"{a['test_loss']:.3f} vs {b['test_loss']:.3f}. ")
        ga, gb = a["test_confidence"] - a["test_acc"], b["test_confidence"] - b["test_acc"]
        if ga > 0 and a["test_ece"] > b["test_ece"]:
            s += (f"{a['label']} is over-confident (confidence {a['test_confidence']:.3f} > accuracy "
                  f"{a['test_acc']:.3f}, ECE {a['test_ece']:.3f} vs {b['test_ece']:.3f}): its remaining wrong "
                  f"answers are made with high confidence, each costing −log(1−p) ≫ log 2, so the mean NLL rises "
                  f"even as accuracy rises. ")
        elif ga < 0 and a["test_ece"] > b["test_ece"]:
            s += (f"{a['label']} is under-confident (confidence {a['test_confidence']:.3f} < accuracy "
                  f"{a['test_acc']:.3f}, ECE {a['test_ece']:.3f} vs {b['test_ece']:.3f}): right answers made with "
                  f"low probability keep the NLL high — the seed's reading (a model not confident in its answers). ")
        else:
            s += (f"Calibration does not explain it (confidence − accuracy: {ga:+.3f} vs {gb:+.3f}; ECE "
                  f"{_fmt(a['test_ece'])} vs {_fmt(b['test_ece'])}): the loss difference is a few confident "
                  f"mistakes on n_test = {n_test or '?'} reviews. ")
    # the seed's case: the linear schedule, higher accuracy and higher loss, read as "not confident"
    if d["scheduler"].nunique() > 1:
        per = d.groupby("scheduler").agg(acc=("test_acc", "mean"), loss=("test_loss", "mean"),
                                         conf=("test_confidence", "mean"), ece=("test_ece", "mean"))
        parts = []
        for sched, r in per.iterrows():
            gap = r["conf"] - r["acc"]
            kind = "over-confident" if gap > 0.01 else "under-confident" if gap < -0.01 else "calibrated on average"
            parts.append(f"{sched}: accuracy {r['acc']:.3f}, test loss {r['loss']:.3f}, confidence {r['conf']:.3f} "
                         f"({kind}, ECE {r['ece']:.3f})")
        s += "Per scheduler (mean over its configs): " + "; ".join(parts) + ". "
        if "linear" in per.index:
            lin = per.loc["linear"]
            others = per.drop(index="linear")
            gap = lin["conf"] - lin["acc"]
            verdict = ("so the data do not support the seed's \"not confident\" reading for the linear schedule: "
                       "it is over-confident on average") if gap > 0.01 else (
                "consistent with the seed's reading: the linear schedule is under-confident on average") if gap < -0.01 \
                else "the linear schedule is calibrated on average, so confidence does not explain a loss gap"
            keys = [c for c in ("model", "batch_size") if c in d]
            if "constant" in per.index and keys:
                m = d[d["scheduler"] == "linear"].merge(d[d["scheduler"] == "constant"], on=keys, suffixes=("_l", "_c"))
                if len(m):
                    k_conf = int((m["test_confidence_l"] > m["test_confidence_c"]).sum())
                    k_loss = int((m["test_loss_l"] > m["test_loss_c"]).sum())
                    k_acc = int((m["test_acc_l"] > m["test_acc_c"]).sum())
                    s += (f"Config by config (same model and batch size), linear is more confident than constant in "
                          f"{k_conf} of {len(m)}, more accurate in {k_acc}, and has the higher test loss in {k_loss}. ")
            if (lin["acc"] > others["acc"]).all() and (lin["loss"] > others["loss"]).all():
                s += f"As in the seed, linear has the higher accuracy and the higher loss; {verdict}. "
            else:
                s += f"Unlike the seed, linear does not have both the higher accuracy and the higher loss; {verdict}. "
    # within trials: val loss rising while val acc holds
    rising = []
    for tid, h in history.groupby("trial_id"):
        h = h.dropna(subset=["val_loss", "val_acc"]).sort_values("epoch")
        if len(h) < 2:
            continue
        i = int(h["val_loss"].to_numpy().argmin())
        last = h.iloc[-1]
        if i < len(h) - 1 and last["val_loss"] > h["val_loss"].iloc[i] + 1e-6 and last["val_acc"] >= h["val_acc"].iloc[i]:
            rising.append(f"{trials.set_index('trial_id').loc[tid, 'cfg']} (val loss {h['val_loss'].iloc[i]:.3f} at "
                          f"epoch {int(h['epoch'].iloc[i])} → {last['val_loss']:.3f} at epoch {int(last['epoch'])}, "
                          f"val acc {h['val_acc'].iloc[i]:.3f} → {last['val_acc']:.3f})")
    if rising:
        s += (f" Within trials, val loss rose while val accuracy held or rose in {len(rising)} trial(s): "
              + "; ".join(rising) + " — growing confidence on the examples it gets wrong.")
    return ["- " + s.strip()]


def _q_steps(sm, done, n_val, kind):
    head = "**(c) Batch size, or just fewer optimizer steps?** "
    if kind != "grid":
        return ["- " + head + "Not assessed for a search study (configs differ in more than batch size)."]
    if not sm:
        return ["- " + head + "Needs at least two batch sizes with history for one model · scheduler."]
    L = []
    for r in sm:
        v = _step_verdict(r)
        anch = "".join(f"; b{b} interpolated from the majority rate at step 0 to its first evaluation at "
                       f"{r['first_steps'][b]:.0f} steps" for b in r["anchored"])
        L.append(f"  - {r['model']} · {r['scheduler']}, batch {r['small']} vs {r['large']}: val acc at matched "
                 f"samples ({r['samples']:,.0f}, epoch {r['epoch']}) "
                 f"{_fmt(r['acc_small_at_samples'])} vs {_fmt(r['acc_large_at_samples'])} "
                 f"({_gap(r['acc_large_at_samples'] - r['acc_small_at_samples'], r['beyond_noise_samples'])}); "
                 f"at matched optimizer steps ({r['steps']:,.0f}) {_fmt(r['acc_small_at_steps'])} vs "
                 f"{_fmt(r['acc_large_at_steps'])} "
                 f"({_gap(r['acc_large_at_steps'] - r['acc_small_at_steps'], r['beyond_noise_steps'])}{anch}) → {v}.")
    sm = [r for r in sm if not r.get("never_learned")]
    if not sm:
        return ["- " + head + "No batch size learned anything (val accuracy at chance throughout): there is no "
                "batch-size effect to attribute."] + L
    n = len(sm)
    count = lambda v: sum(_step_verdict(r) == v for r in sm)
    fewer, itself, per_step, ahead = count(V_FEWER), count(V_ITSELF), count(V_PER_STEP), count(V_AHEAD)
    s = head + f"Of {n} adjacent-batch comparisons (rule below), "
    s += (f"{fewer} show the larger batch behind at matched samples but not at matched optimizer steps (the gap is "
          f"one of fewer steps), {itself} show it behind even at matched steps (an effect of batch size itself)")
    if per_step:
        s += f", {per_step} show it level at matched samples and ahead at matched steps"
    if ahead:
        s += f", {ahead} show it ahead at matched samples"
    s += f", {n - fewer - itself - per_step - ahead} show no difference beyond noise. "
    n_anch = sum(bool(r["anchored"]) for r in sm)
    if n_anch:
        s += (f"{n_anch} of the matched-step values rest on the step-0 anchor (the step ranges of the two batch sizes "
              f"do not overlap), so treat them as rough. ")
    if fewer and not itself:
        s += ("No comparison has the larger batch behind at matched steps: where it falls behind at matched samples "
              "(equal epochs), fewer optimizer steps at the same learning rate account for it.")
    elif fewer > itself:
        s += "So the batch-size effect here is mostly one of fewer optimizer steps at a fixed learning rate."
    elif itself > fewer:
        s += "So larger batches are worse here even per optimizer step, not only for taking fewer steps."
    elif per_step > max(fewer, itself):
        s += ("So neighbouring batch sizes are within noise of each other per example seen, while per optimizer "
              "step the larger batch is ahead: within a fixed number of epochs the larger batches fall behind "
              "mainly by taking fewer steps, not by their size. (Only neighbouring batch sizes are compared; "
              "small steps can add up across the whole axis.)")
    else:
        s += "Neither explanation dominates at this study's resolution."
    return ["- " + s] + L


def _gap(d, beyond):
    if d != d:
        return "no value"
    tag = {True: "beyond noise", False: "within noise", None: "noise unknown"}[beyond]
    return f"larger batch {d:+.3f}, {tag}"


def _search_section(trials, done, cfg_cols, figs):
    L = ["## Search", ""]
    t = trials[trials["best_val_acc"].notna()]
    if len(t):
        best = t.sort_values(["best_val_acc", "test_acc"], ascending=False).groupby("model", sort=True).head(1)
        cols = [c for c in dict.fromkeys([*cfg_cols, "lr", "warmup_ratio", "weight_decay"]) if c in best]
        tab = best[["trial_id", *cols, "best_val_acc", "test_acc", "test_loss", "test_ece"]].copy()
        for c in ("best_val_acc", "test_acc", "test_loss", "test_ece"):
            tab[c] = [_fmt(x) for x in tab[c]]
        if "lr" in tab:
            tab["lr"] = [f"{x:.3g}" if x == x else "–" for x in best["lr"]]
        L += ["Best config per model (by val accuracy):", "", md_table(tab), ""]
    if "search" in figs:
        L += [f"![search history]({figs['search']})", ""]
    return L


# ----------------------------------------------------------------------------- CLI

def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tune_study.report",
                                description="Build report.md, figures and test_table.csv for a finished or "
                                            "interrupted study folder.")
    p.add_argument("study_dir", help="the study folder, <results-dir>/<study name>")
    p.add_argument("--collapse-margin", type=float, default=DEFAULT_MARGIN,
                   help=f"val-acc band around the majority-class rate that counts as collapsed (default {DEFAULT_MARGIN})")
    p.add_argument("--no-figures", action="store_true", help="write report.md and the tables only")
    args = p.parse_args(argv)
    try:
        out = build_report(args.study_dir, margin=args.collapse_margin, figures=not args.no_figures)
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
