"""The study report: ``python -m tune_study.report STUDY_DIR`` or ``build_report(study_dir)``.

Reads the study folder's exports (load.py, read-only), analyses them (analysis.py, questions.py:
pure functions to result objects with verdicts), renders report.md (markdown.py, answers.py) and
writes, beside the exports and never over them:

  report.md                 findings, each rendered from an analysis result
  test_table.csv            one row per trial: best-val epoch, test metrics with Wilson 95% CI, collapse
  expected_max_table.csv    expected best val accuracy vs number of trials (Dodge et al. 2019)
  fig_curves_{epoch,steps,samples}.png, fig_test_vs_batch.png, fig_reliability.png, fig_expected_max.png,
  fig_noise_scale.png        (where the study measured the gradient noise scale)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import EXIT_BAD_INPUT, StudyError
from ..log import show_warnings
from .load import StudyResults, load_study

DEFAULT_MARGIN = 0.02


def build_report(study_dir, margin: float = DEFAULT_MARGIN, log=print, figures: bool = True,
                 headline: list | None = None) -> Path:
    """Write report.md, the report's tables and figures into ``study_dir``; returns report.md's path.

    ``margin``: the val-acc band around the majority-class rate that counts as collapsed; ``headline``,
    a list, receives the report's few headline lines (``report.headline``). Raises
    StudyError when ``study_dir`` is not a study folder. The exports themselves are only read.
    """
    from .build import analyse, write_outputs
    from .markdown import render

    study = load_study(study_dir)
    an = analyse(study, margin)
    an.figures = write_outputs(an, figures=figures)
    out = study.path / "report.md"
    out.write_text(render(an))
    if headline is not None:  # the few lines a driver prints at the end of a study
        from .headline import headline as lines

        headline.extend(lines(an))
    return out


def main(argv=None) -> int:
    show_warnings()
    p = argparse.ArgumentParser(prog="python -m tune_study.report",
                                description="Build report.md, its tables and figures for a study folder.")
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


__all__ = ["build_report", "load_study", "StudyResults", "main"]
