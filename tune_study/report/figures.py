"""The report's figures (matplotlib, Agg: no display needed). Each returns its path, or None when
the data hold nothing to draw."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import TRAIN_DEFAULTS
from .analysis import ok

CURVES = [("train_loss", "train loss (cross-entropy)"), ("val_loss", "val loss (cross-entropy)"),
          ("val_acc", "val accuracy")]
DPI = 110


def _figure(w, h):
    from matplotlib.figure import Figure  # a bare Figure draws with Agg, no pyplot state

    return Figure(figsize=(w, h), dpi=DPI, layout="constrained")


def batch_colors(batch_sizes) -> dict:
    """A fixed colour per batch size (viridis over the sorted sizes): the same in every figure."""
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    bs = sorted({int(b) for b in batch_sizes if ok(b)})
    return {b: cmap(0.82 * i / (len(bs) - 1) if len(bs) > 1 else 0.0) for i, b in enumerate(bs)}


def _panels(t: pd.DataFrame) -> list[tuple]:
    ps = t[["model", "scheduler"]].dropna().drop_duplicates()
    return sorted(map(tuple, ps.values.tolist()), key=lambda x: (str(x[0]), str(x[1])))


def _log_axis(ax):
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}" if x >= 1 else f"{x:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def fig_curves(history, trials, xkey, xlabel, path: Path, colors, majority, logx=False):
    """Train loss, val loss, val acc against ``xkey``; one column per model · scheduler, one line per
    batch size (mean over a config's runs at each evaluation); hollow square: the last evaluation of a
    trial stopped early."""
    from matplotlib.lines import Line2D

    panels = _panels(trials)
    if not panels or not len(history) or xkey not in history:
        return None
    # only points with a measured x (> 0 on a log axis) and some measured curve can be drawn: trials
    # that errored before their first evaluation leave rows without them, and a log axis over no
    # positive value cannot be drawn at all
    drawable = history[xkey].notna() & history[[k for k, _ in CURVES if k in history]].notna().any(axis=1)
    if logx:
        drawable &= history[xkey] > 0
    history = history[drawable & history["trial_id"].isin(set(trials["trial_id"]))]
    panels = [p for p in panels if p in set(_panels(trials[trials["trial_id"].isin(set(history["trial_id"]))]))]
    if not panels:
        return None
    fig = _figure(max(12.0, 3.4 * len(panels) + 1.5), 8.5)
    axs = fig.subplots(len(CURVES), len(panels), squeeze=False, sharex="col", sharey="row")
    h = history.merge(trials[["trial_id", "cfg"]], on="trial_id", how="left")
    for j, (model, sched) in enumerate(panels):
        p = trials[(trials["model"] == model) & (trials["scheduler"] == sched)]
        for cfg, g in sorted(p.groupby("cfg"), key=lambda kv: (kv[1]["batch_size"].iloc[0], kv[0])):
            b = g["batch_size"].iloc[0]
            color = colors.get(int(b), "grey") if ok(b) else "grey"
            d = h[h["cfg"] == cfg]
            ends = d[d["epoch_end"]]
            for i, (ykey, _) in enumerate(CURVES):
                if ykey not in d:
                    continue
                # a row may lack one curve (NaN): plot what each row carries
                src = d.dropna(subset=[ykey, xkey])
                c = src.groupby("epoch")[[xkey, ykey]].mean().sort_index()
                axs[i][j].plot(c[xkey], c[ykey], "-", color=color, lw=1.5)
                e = ends.dropna(subset=[ykey, xkey]).groupby("epoch")[[xkey, ykey]].mean()
                axs[i][j].plot(e[xkey], e[ykey], "o", color=color, ms=4)
            for t in g[g["stopped_early"]].itertuples():
                last = d[d["trial_id"] == t.trial_id].sort_values("epoch").tail(1)
                for i, (ykey, _) in enumerate(CURVES):
                    if ykey in last and len(last):
                        axs[i][j].plot(last[xkey], last[ykey], "s", mfc="white", mec=color, mew=1.5, ms=7, zorder=4)
        axs[0][j].set_title(f"{model} · {sched}", fontsize=11)
        axs[2][j].axhline(majority, color="grey", ls=":", lw=1)
        axs[-1][j].set_xlabel(xlabel)
        if logx:
            _log_axis(axs[-1][j])
    for i, (_, ylabel) in enumerate(CURVES):
        axs[i][0].set_ylabel(ylabel)
        for ax in axs[i]:
            ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=c, marker="o", ms=4, lw=1.5, label=str(b)) for b, c in colors.items()]
    handles += [Line2D([], [], color="grey", ls=":", label=f"majority class ({majority:.2f})"),
                Line2D([], [], color="grey", marker="o", lw=0, ms=4, label="epoch end"),
                Line2D([], [], color="grey", marker="s", mfc="white", ms=7, lw=0, label="stopped early")]
    fig.legend(handles=handles, title="batch size", loc="outside right upper", fontsize=9, title_fontsize=9)
    fig.align_ylabels()
    fig.draw_without_rendering()  # a first layout pass, so shared-axis tick labels settle before the real one
    fig.savefig(path, dpi=DPI)
    return path


def fig_test_vs_batch(trials, path: Path, intervals: dict):
    """Test acc (with ``intervals[trial_id] = (lo, hi)``), test loss and ECE against batch size, one
    line per model · scheduler (mean over a config's runs)."""
    import matplotlib

    t = trials[trials["test_acc"].notna()]
    if not len(t) or t["batch_size"].nunique() < 2:
        return None
    fig = _figure(12, 4)
    axs = fig.subplots(1, 3)
    cmap = matplotlib.colormaps["tab10"]
    panels = _panels(t)
    for k, (model, sched) in enumerate(panels):
        c = t[(t["model"] == model) & (t["scheduler"] == sched)]
        g = c.groupby("batch_size").agg(acc=("test_acc", "mean"), loss=("test_loss", "mean"),
                                        ece=("test_ece", "mean"), ids=("trial_id", list)).sort_index()
        x = g.index.astype(float) * 2 ** (0.06 * (k - (len(panels) - 1) / 2))  # dodge overlapping points
        lo = [intervals.get(ids[0], (a, a))[0] if len(ids) == 1 else a for ids, a in zip(g["ids"], g["acc"])]
        hi = [intervals.get(ids[0], (a, a))[1] if len(ids) == 1 else a for ids, a in zip(g["ids"], g["acc"])]
        kw = dict(color=cmap(k % 10), marker="os^Dv"[k % 5], ms=5, lw=1.5, capsize=3, label=f"{model} · {sched}")
        yerr = np.nan_to_num(np.vstack([g["acc"] - np.array(lo, float), np.array(hi, float) - g["acc"]]))
        axs[0].errorbar(x, g["acc"], yerr=yerr, **kw)
        axs[1].plot(x, g["loss"], **{k2: v for k2, v in kw.items() if k2 != "capsize"})
        axs[2].plot(x, g["ece"], **{k2: v for k2, v in kw.items() if k2 != "capsize"})
    bs = sorted(int(b) for b in t["batch_size"].dropna().unique())
    for ax, title in zip(axs, ("test accuracy (95% CI)", "test loss (NLL)", "test ECE (15 bins)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(bs, [str(b) for b in bs])
        ax.minorticks_off()
        ax.set_xlabel("effective batch size")
        ax.set_title(title, fontsize=11)
        ax.grid(alpha=0.3)
    handles, labels = axs[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=9)
    fig.savefig(path, dpi=DPI)
    return path


def _bins(s) -> list:
    try:
        b = json.loads(s) if isinstance(s, str) else s
        return [tuple(x) for x in b] if b is not None else []
    except Exception:
        return []


def fig_reliability(trials, path: Path, colors):
    """Reliability diagrams (stored 15-bin test reliability of the best-val weights), pooled over runs."""
    from matplotlib.lines import Line2D

    panels = _panels(trials)
    if not panels or "test_reliability" not in trials:
        return None
    ncol = min(4, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    fig = _figure(max(12.0, 3.2 * ncol), 4.0 * nrow)
    axs = fig.subplots(nrow, ncol, squeeze=False, sharex=True, sharey=True)
    drawn = False
    for k, (model, sched) in enumerate(panels):
        ax = axs[k // ncol][k % ncol]
        p = trials[(trials["model"] == model) & (trials["scheduler"] == sched)]
        handles = []
        for b, g in p.groupby("batch_size", sort=True):
            pooled = {}
            for s in g["test_reliability"].dropna():
                for lo, hi, n, conf, acc in _bins(s):
                    q = pooled.setdefault(round(lo, 4), [0, 0.0, 0.0])
                    q[0], q[1], q[2] = q[0] + n, q[1] + n * conf, q[2] + n * acc
            if not pooled:
                continue
            pts = [(c / n, a / n, n) for _, (n, c, a) in sorted(pooled.items()) if n]
            tot = sum(n for *_, n in pts)
            ece = sum(n / tot * abs(a - c) for c, a, n in pts)
            color = colors.get(int(b), "grey")
            ax.plot([q[0] for q in pts], [q[1] for q in pts], "-", color=color, lw=1.4)
            ax.scatter([q[0] for q in pts], [q[1] for q in pts], s=[12 + 140 * q[2] / tot for q in pts],
                       color=color, edgecolor="white", lw=0.5, zorder=3)
            handles.append(Line2D([], [], color=color, marker="o", ms=6, lw=1.4, label=f"b{int(b)}: ECE {ece:.3f}"))
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
        ax.set_xlabel("mean confidence in bin")
    for row in axs:
        row[0].set_ylabel("accuracy in bin")
    axs[0][0].set_xlim(0.45, 1.01)
    axs[0][0].set_ylim(-0.02, 1.02)
    fig.savefig(path, dpi=DPI)
    return path


def fig_expected_max(curves, path: Path):
    """Expected best val accuracy against the number of trials, one line per group (Dodge et al. 2019)."""
    curves = [c for c in curves if c.n_trials >= 1]
    if not curves:
        return None
    fig = _figure(7, 4)
    ax = fig.subplots()
    for c in curves:
        n = np.arange(1, c.n_trials + 1)
        ax.plot(n, c.curve, "-o", ms=3, lw=1.5, label=f"{c.group} ({c.n_trials} trials)")
    ax.set_xlabel("number of trials (drawn with replacement from this study's)")
    ax.set_ylabel("expected best val accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    fig.savefig(path, dpi=DPI)
    return path


def fig_search_history(trials, path: Path):
    """Search studies: best val accuracy by trial order with the running best (val only selects);
    crosses: the test accuracy of each trial's best-val weights."""
    import matplotlib

    t = trials[trials["best_val_acc"].notna()].sort_values("trial_id").reset_index(drop=True)
    if not len(t):
        return None
    fig = _figure(12, 4)
    ax = fig.subplots()
    order = np.arange(1, len(t) + 1)
    cmap = matplotlib.colormaps["tab10"]
    for k, m in enumerate(sorted(t["model"].astype(str).unique())):
        sel = (t["model"].astype(str) == m).to_numpy()
        ax.scatter(order[sel], t.loc[sel, "best_val_acc"], color=cmap(k), s=36, label=f"{m}: best val acc")
        ax.scatter(order[sel], t.loc[sel, "test_acc"], color=cmap(k), s=36, marker="x", label=f"{m}: test acc")
    ax.step(order, t["best_val_acc"].cummax(), where="post", color="black", lw=1.5, label="running best val acc")
    ax.set_xlabel("trial (in order of creation)")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=9)
    fig.savefig(path, dpi=DPI)
    return path


def fig_noise_scale(history, trials, path: Path, colors):
    """B_simple of each evaluation interval against samples seen (log y), one line per trial coloured
    by its batch size (dash-dot for a scaled lr), the grid's batch sizes as dashed horizontal lines;
    one panel per model · scheduler. Undefined intervals (NaN) are gaps, never points."""
    from matplotlib.lines import Line2D

    panels = _panels(trials)
    if not panels or "gns_b_simple" not in history:
        return None
    h = history.assign(gns_b_simple=pd.to_numeric(history["gns_b_simple"], errors="coerce"))
    h = h[h["gns_b_simple"] > 0]
    if not len(h):
        return None
    fig = _figure(max(7.0, 4.2 * len(panels) + 1.5), 4.2)
    axs = fig.subplots(1, len(panels), squeeze=False, sharey=True)[0]
    scaled = "lr_scaling" in trials
    for ax, (model, sched) in zip(axs, panels):
        p = trials[(trials["model"] == model) & (trials["scheduler"] == sched)]
        for t in p.sort_values(["batch_size", "trial_id"]).itertuples():
            d = history[history["trial_id"] == t.trial_id].sort_values("samples_seen")
            y = pd.to_numeric(d["gns_b_simple"], errors="coerce").where(lambda v: v > 0)  # NaN: a gap in the line
            ls = "-." if scaled and str(getattr(t, "lr_scaling", TRAIN_DEFAULTS["lr_scaling"])) != "none" else "-"
            color = colors.get(int(t.batch_size), "grey") if ok(t.batch_size) else "grey"
            ax.plot(d["samples_seen"], y, ls, color=color, marker="o", ms=3, lw=1.4)
            # measured but undefined (|G|² or tr(Σ) summed to <= 0): a cross on the bottom edge, not a value
            bad = d[y.isna().to_numpy() & (pd.to_numeric(d.get("gns_windows"), errors="coerce").fillna(0) > 0).to_numpy()]
            ax.plot(bad["samples_seen"], [0.03] * len(bad), "x", color=color, ms=6, mew=1.5,
                    transform=ax.get_xaxis_transform(), clip_on=False)
        for b, color in colors.items():
            ax.axhline(b, color=color, ls="--", lw=1, alpha=0.8)
        ax.set_yscale("log")
        ax.set_title(f"{model} · {sched}", fontsize=11)
        ax.set_xlabel("training samples seen")
        ax.grid(alpha=0.3)
    axs[0].set_ylabel("B_simple = tr(Σ)/|G|² (log scale)")
    handles = [Line2D([], [], color=c, marker="o", ms=3, lw=1.4, label=str(b)) for b, c in colors.items()]
    handles += [Line2D([], [], color="grey", ls="--", lw=1, label="grid batch size"),
                Line2D([], [], color="grey", marker="x", lw=0, ms=6, mew=1.5, label="undefined (≤ 0 estimate)")]
    if scaled:
        handles += [Line2D([], [], color="grey", ls="-.", lw=1.4, label="scaled lr")]
    fig.legend(handles=handles, title="batch size", loc="outside right upper", fontsize=9, title_fontsize=9)
    fig.savefig(path, dpi=DPI)
    return path
