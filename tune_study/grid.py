"""The grid study on Ray Tune: ``python -m tune_study.grid [--space FILE] [--resume] ...``.

batch size x model x scheduler (x seed) as ``tune.grid_search`` axes, ASHA early stopping on val
acc (one rung per epoch), checkpoints every epoch (at most 2 kept per trial), retries from the last
checkpoint, ``--resume`` through ``Tuner.restore``. Output: <results-dir>/<study name>/ with the Ray
experiment (tune/), trials.csv/.parquet, history.csv/.parquet (predictions.csv/.parquet when the
trials stored test predictions) and the report. With ``repeat: {top: K, seeds: [...]}`` the K best
configs by val accuracy then run again over those seeds without early stopping (experiment repeat/;
``stage`` "repeat" in the tables). The runner itself is ``tune_study.tuning.runner``.
"""
from __future__ import annotations

import sys
import warnings

from .config import Study, load_space
from .errors import EXIT_BAD_INPUT, StudyError
from .log import show_warnings
from .report import build_report
from .tuning.runner import options_from_args, representative_configs, run_study, study_parser, tokenize_for_study
from .tuning.study_folder import open_study_folder


def parser():
    return study_parser("python -m tune_study.grid", "search_spaces/default.yaml", __doc__)


def grid_param_space(study: Study) -> dict:
    from ray import tune

    return {**study.fixed, **{k: tune.grid_search(v) for k, v in study.axes.items()}}


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    show_warnings()
    try:
        study = load_space(args.space, kind="grid")
        # Folder checks, the driver lock (held until the study ends), the study as run on
        # --resume, then the data: loaded and tokenized before anything is written.
        study, _, lock, datasets = open_study_folder(
            study, args, lambda f: load_space(f, kind="grid"),
            lambda s: tokenize_for_study(s, representative_configs(s)))
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        return run_study(study, options_from_args(args), grid_param_space(study), kind="grid", datasets=datasets,
                         build_report=build_report)
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        lock.release()   # (process death releases it too)


if __name__ == "__main__":
    sys.exit(main())
