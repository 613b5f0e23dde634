"""The grid study on Ray Tune: ``python -m tune_study.grid [--space FILE] [--resume] ...``.

batch size x model x scheduler (x seed) as ``tune.grid_search`` axes, ASHA early stopping on val
acc (one rung per epoch), checkpoints every epoch (at most 2 kept per trial), retries from the last
checkpoint, ``--resume`` through ``Tuner.restore``. Output: <results-dir>/<study name>/ with the Ray
experiment (tune/), trials.csv/.parquet, history.csv/.parquet (predictions.csv/.parquet when the
trials stored test predictions) and the report. With ``repeat: {top: K, seeds: [...]}`` the K best
configs by val accuracy then run again over those seeds without early stopping (experiment repeat/;
``stage`` "repeat" in the tables). The runner itself is ``tune_study.study``.
"""
from __future__ import annotations

import sys
import warnings

from .errors import EXIT_BAD_INPUT, StudyError
from .config import load_space
from .study import (check_study_dir, create_study_dir, options_from_args, representative_configs, run_study,
                    study_parser, study_paths, tokenize_for_study)


def parser():
    return study_parser("python -m tune_study.grid", "search_spaces/default.yaml", __doc__)


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
        return run_study(study, options_from_args(args), grid_param_space(study), kind="grid", datasets=datasets)
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
