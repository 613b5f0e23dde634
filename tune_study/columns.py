"""The study's exported tables and their column names, defined once.

The training loop reports these names, ``results`` writes the tables (it is their only writer) and
the report reads them. Three tables per study folder, each as CSV and Parquet:

  trials       one row per trial: its config (axes and fixed values, ``stage``), status, progress,
               the best-val epoch and the test metrics of its best-val weights, throughput, memory
  history      one row per *evaluation* of val: ``evals_per_epoch`` evenly spaced points per epoch,
               the last at the epoch's end (``epoch_end``); ``epoch`` is fractional (1.5 = half-way
               through epoch 2), with the optimizer steps and samples seen at that point
  predictions  one row per trial x test example: the best-val weights' probability of the positive
               class and the label, keyed by the test row (every trial scores the same test rows)
"""
from __future__ import annotations

# The axes a study varies most often, in the order tables sort by.
AXIS_ORDER = ["model", "batch_size", "scheduler", "seed"]

# Which Tune run a trial belongs to: the grid, an Optuna search, or the seed repeats of the top
# configs that run after the grid or search in the same study folder.
STAGES = ("grid", "search", "repeat")

# One evaluation of val (mid-epoch or at the epoch's end), with the gradient noise scale measured in
# the accumulation windows since the previous evaluation (noise_scale.py; NaN and 0 windows when it is
# off): the mean per window of the unbiased estimates of |G|^2 and tr(Sigma), B_simple = the ratio of
# their sums (NaN where either sum is <= 0), and the number of windows measured.
GNS_COLUMNS = ["gns_g2", "gns_trace", "gns_b_simple", "gns_windows"]
EVAL_COLUMNS = ["epoch", "epoch_end", "optimizer_steps", "samples_seen", "train_loss", "val_loss", "val_acc",
                *GNS_COLUMNS]

# Reported at each epoch's end (the rows of history with epoch_end True carry them too).
EPOCH_COLUMNS = [
    "lr", "lr_peak", "beta2", "samples_per_s", "epoch_train_s", "eval_s", "train_time_s",
    "best_epoch", "best_val_acc", "best_val_loss",
    "test_acc", "test_loss", "test_nll", "test_ece", "test_confidence", "test_reliability",
    "micro_batch_size", "accumulation_steps", "oom_halvings", "peak_mem_gib", "precision", "device",
    "n_train", "n_val", "n_test", "val_majority_rate", "resumed_from_epoch", "best_model_path",
    # B_simple over all the windows of this epoch, and over those of the first epoch
    "gns_b_simple_epoch", "gns_b_simple_first_epoch",
    "evals",  # the epoch's evaluations (mid-epoch ones and the epoch's end): a JSON list of EVAL_COLUMNS rows
]

# The history table: trial id, its axes (added by results), then these.
HISTORY_COLUMNS = [*EVAL_COLUMNS, "lr", "lr_peak", "beta2", "samples_per_s", "epoch_train_s", "eval_s",
                   "best_epoch", "best_val_acc", "test_acc", "test_loss", "test_ece", "test_confidence",
                   "micro_batch_size", "accumulation_steps", "oom_halvings", "peak_mem_gib", "resumed_from_epoch",
                   "gns_b_simple_epoch",
                   "replayed", "from_checkpoint", "time_this_iter_s", "time_total_s"]

# The trials table, after the trial id, stage and axes.
TRIAL_COLUMNS = [
    "status", "stopped_early", "epochs_run", "epochs_planned", "optimizer_steps", "samples_seen",
    "lr_peak", "beta2",  # AdamW's peak lr and beta2 as the trial used them (scaled with its batch, if asked)
    "best_epoch", "best_val_acc", "best_val_loss", "test_acc", "test_loss", "test_nll", "test_ece",
    "test_confidence", "test_reliability", "samples_per_s", "wall_time_s", "best_model_path",
    "micro_batch_size", "accumulation_steps", "peak_mem_gib", "oom_halvings", "device", "gpu_share",
    "precision", "node_id", "n_train", "n_val", "n_test", "val_majority_rate", "evals_per_epoch",
    "gns_b_simple_first_epoch", "gns_b_simple_epoch",   # B_simple over the first epoch, and over the last one run
    "error", "trial_path",
]

# The predictions table.
PREDICTION_COLUMNS = ["trial_id", "row", "label", "prob_pos"]

# The columns of these tables that hold text, JSON or flags; every other one holds a number (the
# report reads them as numbers: a CSV holds "" where a value is missing).
TEXT_COLUMNS = {"trial_id", "stage", "model", "scheduler", "status", "test_reliability", "best_model_path", "device",
                "precision", "node_id", "error", "trial_path", "evals", "lr_scaling", "beta2_scaling"}
FLAG_COLUMNS = {"stopped_early", "epoch_end", "replayed", "from_checkpoint"}


def numeric(columns: list[str]) -> list[str]:
    """The numeric ones of ``columns``."""
    return [c for c in columns if c not in TEXT_COLUMNS and c not in FLAG_COLUMNS]


# File names of the exports in a study folder (each also as .parquet).
TRIALS, HISTORY, PREDICTIONS = "trials", "history", "predictions"
