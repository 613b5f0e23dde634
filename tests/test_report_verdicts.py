"""Each verdict the report prints, on two synthetic studies whose data say opposite things: the
sentence must flip. Negative controls for the five defects of the old report (report.py): a step-0
anchor, an undetermined comparison printed as '>', Welch p = 0 for constant seed groups, test
accuracy breaking val ties, fixed sentences in (a), (b) and the ASHA note."""
from __future__ import annotations

import numpy as np
from report_synth import N_TEST, correct_mask, curve, flat_history, line, preds, report, trial


def _two_configs(acc_a_right, acc_b_right, offset_b=0, conf=0.8, **kw_b):
    ta = trial("a", batch_size=8, best_val_acc=0.90, test_acc=acc_a_right / N_TEST)
    tb = trial("b", batch_size=32, best_val_acc=0.85, test_acc=acc_b_right / N_TEST, **kw_b)
    return [ta, tb], [preds("a", correct_mask(acc_a_right), conf), preds("b", correct_mask(acc_b_right, offset=offset_b), conf)]


# ----------------------------------------------------------------------------- paired comparisons

def test_runner_up_comparison_flips_with_mcnemar(tmp_path):
    # 130 vs 100 right, nested: 30 discordant all one way -> beyond noise
    t, p = _two_configs(130, 100)
    far = line(report(tmp_path, "far", t, predictions=p), "runner-up by val")
    assert "beyond noise (exact McNemar on 30 discordant" in far and "(30 vs 0)" in far
    # 101 vs 100 right, shifted: 51 vs 50 discordant -> within noise
    t, p = _two_configs(101, 100, offset_b=50)
    near = line(report(tmp_path, "near", t, predictions=p), "runner-up by val")
    assert "within noise (exact McNemar on" in near and "beyond noise" not in near


def test_identical_answers_is_within_noise_not_p_zero(tmp_path):
    t, p = _two_configs(120, 120)
    s = line(report(tmp_path, "same", t, predictions=p), "runner-up by val")
    assert "within noise (identical answers on every test example" in s and "p = 0" not in s
    t, p = _two_configs(120, 60)
    assert "beyond noise" in line(report(tmp_path, "diff", t, predictions=p), "runner-up by val")


def test_unpaired_rule_only_without_predictions(tmp_path):
    t, p = _two_configs(130, 100)
    with_p = line(report(tmp_path, "p", t, predictions=p), "runner-up by val")
    without = line(report(tmp_path, "nop", t), "runner-up by val")
    assert "McNemar" in with_p and "Newcombe" not in with_p
    assert "Newcombe" in without and "unpaired" in without and "McNemar" not in without


# ----------------------------------------------------------------------------- batch-size ordering

def _ordering_study(root, name, rights, n_test=N_TEST, with_preds=True):
    ts = [trial(f"t{b}", batch_size=b, best_val_acc=0.9 - 0.01 * i, test_acc=r / N_TEST, n_test=n_test)
          for i, (b, r) in enumerate(zip((8, 32, 128), rights))]
    ps = [preds(f"t{b}", correct_mask(r), 0.8) for b, r in zip((8, 32, 128), rights)] if with_preds else None
    return line(report(root, name, ts, predictions=ps), "Batch-size ordering")


def test_ordering_symbols_flip(tmp_path):
    # nested masks: 140 vs 100 vs 60 right -> 40 discordant each step, all one way
    s = _ordering_study(tmp_path, "far", (140, 100, 60))
    assert "batch 8 (0.933) > 32 (0.667) > 128 (0.400)" in s and "Best vs worst batch: beyond noise" in s
    s = _ordering_study(tmp_path, "near", (101, 100, 99))
    assert "batch 8 (0.673) ≈ 32 (0.667) ≈ 128 (0.660)" in s and "Best vs worst batch: within noise" in s


def test_ordering_undetermined_is_not_printed_as_beyond(tmp_path):
    # defect 2 negative control: n_test unknown and no predictions -> '?', never '>'
    s = _ordering_study(tmp_path, "unknown", (140, 100, 60), n_test=float("nan"), with_preds=False)
    assert "8 (0.933) ? 32 (0.667) ? 128 (0.400)" in s and ">" not in s.split("(> beyond")[0]
    assert "Best vs worst batch: undetermined" in s


def test_ordering_holm_family_named_and_applied(tmp_path):
    # 12 vs 3 discordant: raw McNemar p = 0.035 (< .05) but x3 in a 3-comparison family -> within noise
    # b32 vs b128: 4 vs 0 discordant, p = 0.125; b8 vs b128: 16 vs 3. Holm: 0.035 * 2 = 0.07
    ts = [trial("t8", batch_size=8, test_acc=90 / 150), trial("t32", batch_size=32, test_acc=81 / 150),
          trial("t128", batch_size=128, test_acc=77 / 150)]
    m8 = correct_mask(90)
    m32 = m8.copy()
    m32[:12] = False
    m32[100:103] = True
    m128 = m32.copy()
    m128[20:24] = False
    ps = [preds("t8", m8, 0.8), preds("t32", m32, 0.8), preds("t128", m128, 0.8)]
    text = report(tmp_path, "holm", ts, predictions=ps)
    s = line(text, "  - minilm · constant · b8 0.600 vs minilm · constant · b32")
    assert "p = 0.035, Holm-adjusted 0.07" in s and ": within noise" in s
    assert "Holm over the family minilm · constant: 3 comparisons" in text


# ----------------------------------------------------------------------------- selection by val only

def test_val_tie_broken_by_val_loss_never_by_test(tmp_path):
    # defect 3 negative control: a tie on val acc; 'b' has the lower val loss but the LOWER test accuracy
    def study(name, loss_a, loss_b):
        ts = [trial("a", batch_size=8, best_val_acc=0.9, best_val_loss=loss_a, test_acc=0.85),
              trial("b", batch_size=32, best_val_acc=0.9, best_val_loss=loss_b, test_acc=0.70)]
        return line(report(tmp_path, name, ts), "**Best config**")
    s = study("b_wins", 0.40, 0.30)
    assert "**minilm · constant · b32**" in s and "broken by the lower val loss" in s
    s = study("a_wins", 0.30, 0.40)
    assert "**minilm · constant · b8**" in s


# ----------------------------------------------------------------------------- seeds

def _seed_study(root, name, accs_a, accs_b, with_preds=True):
    ts, ps = [], []
    for cfg, b, accs in (("a", 8, accs_a), ("b", 32, accs_b)):
        for s, acc in enumerate(accs):
            tid = f"{cfg}{s}"
            ts.append(trial(tid, batch_size=b, seed=s, best_val_acc=acc, test_acc=acc))
            ps.append(preds(tid, correct_mask(round(acc * N_TEST)), 0.8))
    return report(root, name, ts, predictions=ps if with_preds else None,
                  axes=("model", "batch_size", "scheduler", "seed"))


def test_welch_constant_groups_undefined_falls_back_to_paired(tmp_path):
    # defect 2 negative control: constant but different seed groups used to print "Welch p = 0"
    text = _seed_study(tmp_path, "const", [0.8, 0.8], [0.7, 0.7])
    s = line(text, "runner-up by val")
    assert "no spread across seeds (Welch undefined): paired test over matched runs" in s
    assert "beyond noise (" in s and "McNemar" in s and "Welch over seeds, p = 0" not in text
    text = _seed_study(tmp_path, "const_nopred", [0.8, 0.8], [0.7, 0.7], with_preds=False)
    assert "runner-up by val" in text and ": undetermined (no spread across seeds" in line(text, "runner-up by val")


def test_welch_over_seeds_flips(tmp_path):
    far = line(_seed_study(tmp_path, "far", [0.80, 0.81, 0.82], [0.60, 0.61, 0.62]), "runner-up by val")
    near = line(_seed_study(tmp_path, "near", [0.80, 0.70, 0.75], [0.74, 0.78, 0.72]), "runner-up by val")
    assert "beyond noise (Welch over seeds" in far
    assert "within noise (Welch over seeds" in near


def test_seed_intervals_wide_and_collapse_rate(tmp_path):
    ts = [trial(f"a{s}", seed=s, stage="repeat", best_val_acc=v) for s, v in enumerate([0.80, 0.84])]
    grid = [trial("ga", batch_size=8), trial("gb", batch_size=32)]
    ts += [trial(f"b{s}", batch_size=32, seed=s, stage="repeat", best_val_acc=v) for s, v in enumerate([0.7, 0.74])]
    h = flat_history(ts[:3])
    h += curve("b1", 32, lambda s: 0.8 if s < 40 else 0.5)  # b32 seed 1 collapses after epoch 1
    text = report(tmp_path, "seeds", grid + ts, history=flat_history(grid) + h)
    s = line(text, "minilm · constant · b32 (repeat stage, 2 runs)")
    assert "wide: with 2 runs the interval uses t(0.975, 1) = 12.71" in s
    assert "collapsed in 1 of 2 (Wilson 95% [0.09, 0.91]) runs" in s
    assert "collapsed in 0 of 2" in line(text, "minilm · constant · b8 (repeat stage, 2 runs)")


def test_order_survival_flips(tmp_path):
    def study(name, rep_a, rep_b):
        ts = [trial("ga", batch_size=8, best_val_acc=0.90), trial("gb", batch_size=32, best_val_acc=0.85)]
        ts += [trial(f"ra{s}", batch_size=8, seed=s, stage="repeat", best_val_acc=v) for s, v in enumerate(rep_a)]
        ts += [trial(f"rb{s}", batch_size=32, seed=s, stage="repeat", best_val_acc=v) for s, v in enumerate(rep_b)]
        return line(report(tmp_path, name, ts), "Order of the repeated configs")
    kept = study("kept", [0.90, 0.91, 0.92], [0.80, 0.81, 0.82])
    assert "the order survives the seeds, and 1 of its 1 steps are beyond noise" in kept
    swapped = study("swapped", [0.80, 0.85, 0.82], [0.86, 0.84, 0.88])
    assert "the order changes over the seeds" in swapped
    # no spread across seeds in either config: Welch is undefined (not p = 0); Newcombe on n_val instead
    const = study("const", [0.90, 0.90], [0.80, 0.80])
    assert "no spread across seeds (Welch undefined): unpaired Newcombe on n_val" in const and "p = 0" not in const


# ----------------------------------------------------------------------------- (a) collapse

def test_roberta_sentence_only_with_roberta(tmp_path):
    # defect 4 negative control: the old report printed "The seed's RoBERTa collapse did not recur" for minilm
    text = report(tmp_path, "minilm", [trial("a"), trial("b", batch_size=32)])
    s = line(text, "**(a)")
    assert "this study has no RoBERTa model (models: minilm), so it cannot say" in s and "did not recur" not in s
    ts = [trial(f"r{s}", model="roberta-base", seed=s) for s in range(3)]
    h = flat_history(ts[:2]) + curve("r2", 8, lambda st: 0.85 if st < 200 else 0.5)
    s = line(report(tmp_path, "rob", ts, history=h, axes=("model", "batch_size", "scheduler", "seed")), "**(a)")
    assert "here RoBERTa collapsed in 1 of 3 (Wilson 95%" in s and "no RoBERTa model" not in s


# ----------------------------------------------------------------------------- (b) loss vs accuracy

def test_loss_vs_acc_needs_both_gaps_beyond_noise(tmp_path):
    # A: 120 right with confidence .99 (its 30 wrong answers cost -log(.01) each); B: 100 right at .6
    conf_a = np.where(correct_mask(120), 0.99, 0.99)
    ta = trial("a", best_val_acc=0.9, test_acc=0.8, test_loss=0.95)
    tb = trial("b", batch_size=32, best_val_acc=0.85, test_acc=100 / N_TEST, test_loss=0.67)
    s = line(report(tmp_path, "yes", [ta, tb], predictions=[preds("a", correct_mask(120), conf_a),
                                                            preds("b", correct_mask(100), 0.6)]), "**(b)")
    assert "1 have both differences beyond noise" in s and "more confident when wrong" in s
    assert "30 wrong answers carry mean confidence 0.990" in s
    # defect 4 negative control: same accuracies, loss gap tiny (confidences .62 vs .6) -> no claim
    ta["test_loss"] = 0.68
    s = line(report(tmp_path, "no", [ta, tb], predictions=[preds("a", correct_mask(120), 0.62),
                                                           preds("b", correct_mask(100), 0.6)]), "**(b)")
    assert "none has both differences beyond noise" in s and "≫" not in s and "confident when wrong" not in s


def test_loss_vs_acc_holm_over_all_candidate_pairs(tmp_path):
    # A vs B alone: McNemar 12 vs 3 discordant (p = 0.035) and a large NLL gap -> confirmed
    ta = trial("a", best_val_acc=0.9, test_acc=100 / N_TEST, test_loss=1.5)
    tb = trial("b", batch_size=32, best_val_acc=0.85, test_acc=91 / N_TEST, test_loss=0.67)
    pa, pb = preds("a", correct_mask(100), 0.99), preds("b", correct_mask(91, offset=12), 0.6)
    s = line(report(tmp_path, "alone", [ta, tb], predictions=[pa, pb]), "**(b)")
    assert "1 have both differences beyond noise" in s and "Holm-adjusted over the 1 pair(s) tested" in s
    assert "Holm-adjusted p = 0.035, beyond noise" in s
    # four more configs add 6 candidate pairs (each more accurate and higher loss than the next, one
    # review apart): Holm over 7 pairs takes A vs B's accuracy gap to p = 0.25 -> no longer confirmed
    xs = [trial(f"x{i}", batch_size=128, scheduler=f"s{i}", best_val_acc=0.8, test_acc=(120 - i) / N_TEST,
                test_loss=0.5 - 0.01 * i) for i in range(4)]
    px = [preds(f"x{i}", correct_mask(120 - i), 0.7) for i in range(4)]
    s = line(report(tmp_path, "family", [ta, tb, *xs], predictions=[pa, pb, *px]), "**(b)")
    assert "Of 7 pair(s)" in s and "none has both differences beyond noise" in s
    assert "Holm-adjusted over the 7 pair(s) tested" in s and "Holm-adjusted p = 0.25, within noise" in s


def test_loss_vs_acc_nll_gap_decided_by_its_own_test(tmp_path):
    # A right on 120, B on 100 of them (accuracy gap beyond noise); A's 30 wrong answers carry
    # confidence c_w. The table's test losses are the predictions' mean NLL, so the pair is a candidate.
    from tune_study.metrics import nll_per_example

    def study(name, c_w):
        pa = preds("a", correct_mask(120), np.where(correct_mask(120), 0.6, c_w))
        pb = preds("b", correct_mask(100), 0.6)
        loss = lambda p: float(nll_per_example(p["prob_pos"], p["label"]).mean())
        ta = trial("a", best_val_acc=0.9, test_acc=120 / N_TEST, test_loss=loss(pa))
        tb = trial("b", batch_size=32, best_val_acc=0.85, test_acc=100 / N_TEST, test_loss=loss(pb))
        assert ta["test_loss"] > tb["test_loss"]
        return line(report(tmp_path, name, [ta, tb], predictions=[pa, pb]), "**(b)")
    s = study("small_gap", 0.73)   # mean NLL +0.025: the paired t-test cannot tell it from noise
    assert "none has both differences beyond noise" in s
    assert "beyond noise), mean test NLL +0.02" in s and "within noise); paired bootstrap" in s
    s = study("large_gap", 0.99)   # confidently wrong: mean NLL +0.7, beyond noise
    assert "1 have both differences beyond noise" in s and "more confident when wrong" in s


def test_loss_vs_acc_without_predictions_cannot_say(tmp_path):
    ta = trial("a", test_acc=0.8, test_loss=0.7)
    tb = trial("b", batch_size=32, best_val_acc=0.7, test_acc=0.7, test_loss=0.6)
    s = line(report(tmp_path, "nopred", [ta, tb]), "**(b)")
    assert "1 config pair(s) have higher test accuracy together with higher test loss" in s
    assert "cannot say whether any such pair is beyond noise" in s


def test_calibration_only_from_completed_trials(tmp_path):
    # defect 4 negative control: linear trials stopped after 1 epoch, under-confident -> no claim about linear
    def study(name, epochs):
        ts = [trial(f"l{b}", batch_size=b, scheduler="linear", epochs_run=epochs, stopped_early=epochs < 3,
                    test_acc=0.8, test_confidence=0.55) for b in (8, 32)]
        ps = [preds(f"l{b}", correct_mask(120), 0.55) for b in (8, 32)]
        return line(report(tmp_path, name, ts, predictions=ps), "**(b)")
    stopped = study("stopped", 1)
    assert "linear: no trial ran all its planned epochs; 2 stopped early or unfinished, left out" in stopped
    assert "under-confident" not in stopped
    done = study("done", 3)
    assert "linear (2 trial(s) that ran all planned epochs)" in done and "under-confident beyond noise" in done


def test_calibration_verdict_flips(tmp_path):
    # 120 of 150 right (0.8) with confidence .99 -> over-confident; with confidence .8 -> within noise
    def study(name, conf):
        ts = [trial(f"c{b}", batch_size=b, test_acc=0.8, test_confidence=conf) for b in (8, 32)]
        return line(report(tmp_path, name, ts, predictions=[preds(f"c{b}", correct_mask(120), conf)
                                                             for b in (8, 32)]), "**(b)")
    s = study("over", 0.99)
    assert "constant (2 trial(s) that ran all planned epochs)" in s and "over-confident beyond noise" in s
    s = study("within", 0.8)
    assert "confidence within noise of accuracy" in s and "over-confident" not in s and "under-confident" not in s


# ----------------------------------------------------------------------------- (c) step matching

def _steps_study(root, name, acc8, acc32, evals):
    ts = [trial("t8", batch_size=8, evals_per_epoch=evals), trial("t32", batch_size=32, evals_per_epoch=evals)]
    h = curve("t8", 8, acc8, evals_per_epoch=evals) + curve("t32", 32, acc32, evals_per_epoch=evals)
    return report(root, name, ts, history=h)


def learn(steps):  # val acc as a function of optimizer steps: rises from 0.55 to 0.9
    return 0.55 + 0.35 * min(1.0, steps / 300)


def test_steps_not_comparable_without_overlap(tmp_path):
    # defect 1 negative control: one evaluation per epoch -> b8 measured from 150 steps, b32 up to 114:
    # the old report anchored b8 at the majority rate at step 0 and called the gap beyond noise
    text = _steps_study(tmp_path, "no_overlap", learn, learn, evals=1)
    s = line(text, "batch 8 vs 32")
    assert "at matched optimizer steps not comparable (b8 measured from 150 to 450 steps, b32 from 38 to 114" in s
    assert "step 0" not in text and "→ no attribution" in s
    assert "this study cannot answer (c)" in line(text, "**(c)")


def test_steps_attribution_flips(tmp_path):
    # same curve in steps for both: behind at matched samples, level at matched steps -> fewer steps
    text = _steps_study(tmp_path, "fewer", learn, learn, evals=4)
    s = line(text, "batch 8 vs 32")
    assert "at matched optimizer steps 114 steps" in s and "3,600 samples" in s
    assert "→ behind at matched samples but not at matched optimizer steps: the gap is one of fewer steps" in s
    assert "fewer optimizer steps account for it" in line(text, "**(c)")
    # b32 worse by 0.2 at every step count -> behind even at matched steps
    text = _steps_study(tmp_path, "itself", learn, lambda s: learn(s) - 0.2, evals=4)
    assert "→ behind even at matched optimizer steps: an effect of the batch size itself" in line(text, "batch 8 vs 32")
    assert "it does so even per optimizer step" in line(text, "**(c)")


def test_steps_bonferroni_over_the_family(tmp_path):
    # b32 0.12 below b8 at every step count: beyond noise at 95%, within at 97.5% (two measured points)
    text = _steps_study(tmp_path, "widened", learn, lambda s: learn(s) - 0.12, evals=4)
    s = line(text, "batch 8 vs 32")
    assert "at matched optimizer steps 114 steps: 0.683 vs 0.563 (larger batch -0.120, within noise)" in s
    assert "→ behind at matched samples but not at matched optimizer steps" in s
    assert "Bonferroni-widened over each model · scheduler's measured points to 97.5%" in line(text, "**(c)")
    # 0.2 below: beyond noise even at 97.5%
    text = _steps_study(tmp_path, "wide_gap", learn, lambda s: learn(s) - 0.2, evals=4)
    assert "(larger batch -0.200, beyond noise)" in line(text, "batch 8 vs 32")


def test_steps_without_n_val_cannot_judge(tmp_path):
    # measured points but no n_val: undetermined, and the report says why (not "no overlap")
    ts = [trial("t8", batch_size=8, evals_per_epoch=4, n_val=None), trial("t32", batch_size=32, evals_per_epoch=4, n_val=None)]
    h = curve("t8", 8, learn, evals_per_epoch=4) + curve("t32", 32, lambda s: learn(s) - 0.2, evals_per_epoch=4)
    text = report(tmp_path, "no_nval", ts, history=h)
    c = line(text, "**(c)")
    assert "1 have both matched points measured, but n_val is unknown" in c and "cannot answer (c)" in c
    assert "no overlap" not in c and "(larger batch -0.200, undetermined)" in line(text, "batch 8 vs 32")


# ----------------------------------------------------------------------------- ASHA note

def test_asha_note_states_the_data(tmp_path):
    # defect 4 negative control: no fixed causal sentence ("not for their batch size")
    ts = [trial("a", batch_size=8), trial("b", batch_size=512, epochs_run=1, stopped_early=True, best_val_acc=0.7)]
    text = report(tmp_path, "asha", ts)
    s = line(text, "Early stopping (ASHA)")
    assert "1 of 2 trials were stopped early: minilm · constant · b512 after epoch 1 (3 optimizer steps" in s
    assert "not for their batch size" not in text and "pruned first" not in text
    assert "Early stopping" not in report(tmp_path, "noasha", [trial("a"), trial("b", batch_size=32)])


def test_steps_per_step_ahead_and_level(tmp_path):
    # b32 follows b8's curve per sample (4x fewer steps for the same samples): level at samples, ahead at steps
    text = _steps_study(tmp_path, "per_step", learn, lambda s: learn(4 * s), evals=4)
    assert "→ level at matched samples and ahead at matched optimizer steps." in line(text, "batch 8 vs 32")
    # b32 0.15 above that: ahead already at matched samples
    text = _steps_study(tmp_path, "ahead", lambda s: learn(s) - 0.15, lambda s: learn(4 * s), evals=4)
    assert "→ ahead at matched samples." in line(text, "batch 8 vs 32")
    # both flat at 0.8: nothing beyond noise at either point
    text = _steps_study(tmp_path, "level", lambda s: 0.8, lambda s: 0.8, evals=4)
    assert "→ within noise at both matched points." in line(text, "batch 8 vs 32")
    assert "1 within noise at both matched points" in line(text, "**(c)")


# ----------------------------------------------------------------------------- float ties of means over seeds

# Over two seeds (109 + 111) / 150 and (110 + 110) / 150 are the same mean val accuracy, but as floats
# the first is 0.7333333333333334 and the second 0.7333333333333333: the tie must still go to val loss.
SPREAD, FLAT = (109 / N_TEST, 111 / N_TEST), (110 / N_TEST, 110 / N_TEST)


def test_seed_mean_tie_goes_to_val_loss_not_float_rounding(tmp_path):
    assert np.mean(SPREAD) > np.mean(FLAT)  # the float trap this test is about

    def study(name, loss_spread, loss_flat):
        ts = [trial(f"{c}{s}", batch_size=b, seed=s, best_val_acc=v, best_val_loss=loss, test_acc=0.8)
              for c, b, vals, loss in (("a", 8, SPREAD, loss_spread), ("b", 32, FLAT, loss_flat))
              for s, v in enumerate(vals)]
        return line(report(tmp_path, name, ts, axes=("model", "batch_size", "scheduler", "seed")), "**Best config**")
    s = study("flat_wins", 0.40, 0.30)
    assert "**minilm · constant · b32**" in s and "broken by the lower val loss" in s
    s = study("spread_wins", 0.30, 0.40)
    assert "**minilm · constant · b8**" in s and "broken by the lower val loss" in s


def test_ordering_test_tie_goes_to_val_not_float_rounding(tmp_path):
    # equal mean test accuracies over two seeds (floats differ in the last bit): the higher val acc leads
    def study(name, val_spread, val_flat):
        ts = [trial(f"{c}{s}", batch_size=b, seed=s, best_val_acc=val, test_acc=v)
              for c, b, vals, val in (("a", 8, SPREAD, val_spread), ("b", 32, FLAT, val_flat))
              for s, v in enumerate(vals)]
        return line(report(tmp_path, name, ts, axes=("model", "batch_size", "scheduler", "seed")),
                    "Batch-size ordering")
    assert "batch 32 (0.733)" in study("flat_first", 0.80, 0.90)
    assert "batch 8 (0.733)" in study("spread_first", 0.90, 0.80)


def test_repeat_order_tie_goes_to_val_loss_not_float_rounding(tmp_path):
    # main stage: b8 ahead of b32; over the repeat seeds their mean val accuracies tie (floats differ)
    def study(name, loss_b8, loss_b32):
        ts = [trial("ga", batch_size=8, best_val_acc=0.90), trial("gb", batch_size=32, best_val_acc=0.85)]
        ts += [trial(f"r{c}{s}", batch_size=b, seed=s, stage="repeat", best_val_acc=v, best_val_loss=loss)
               for c, b, vals, loss in (("a", 8, FLAT, loss_b8), ("b", 32, SPREAD, loss_b32))
               for s, v in enumerate(vals)]
        return line(report(tmp_path, name, ts), "Order of the repeated configs")
    assert "the order survives the seeds" in study("kept", 0.30, 0.40)
    assert "the order changes over the seeds" in study("swapped", 0.40, 0.30)


# ----------------------------------------------------------------------------- the answer at prob_pos = 0.5

def test_answer_at_exactly_half_is_the_trainers():
    # tied logits: softmax gives exactly 0.5, and the trainer's accuracy counts that as 'negative'
    # (torch.argmax picks index 0 on a tie); the report's per-example answers from the export must agree
    from types import SimpleNamespace

    import pandas as pd
    import torch

    from tune_study.report.analysis import paired_arrays
    from tune_study.training.evaluation import evaluate

    class Fixed(torch.nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.table = logits

        def forward(self, input_ids, attention_mask):
            return SimpleNamespace(logits=self.table[input_ids[:, 0]])

    logits = torch.tensor([[0.0, 0.0], [0.0, 0.0], [-1.0, 1.0], [1.0, -1.0]])
    labels = torch.tensor([1, 0, 1, 1])
    split = {"input_ids": torch.arange(4)[:, None], "attention_mask": torch.ones(4, 1), "labels": labels}
    ev = evaluate(Fixed(logits), split)
    assert ev["acc"] == 0.5  # rows 1 and 2 right: the tie is 'negative'
    p = pd.DataFrame({"trial_id": "a", "row": range(4), "label": labels.numpy(), "prob_pos": ev["probs"][:, 1].tolist()})
    assert p["prob_pos"].iloc[0] == 0.5
    arr = paired_arrays(pd.concat([p, p.assign(trial_id="b")]), ["a"], ["b"])
    assert arr["correct_a"].tolist() == [False, True, True, False] and arr["correct_a"].mean() == ev["acc"]


def test_paired_verdict_agrees_with_accuracies_at_half(tmp_path):
    # 'a' is right on rows 0-99 and says exactly 0.5 on the 25 label-1 rows among 100-149: by the
    # trainer's rule those are wrong, so a's accuracy is 100/150, the same rows as 'b' right on 0-99
    half = np.arange(N_TEST) % 2 == 1
    half[:100] = False
    pa = preds("a", correct_mask(100), 0.8)
    pa.loc[half, "prob_pos"] = 0.5

    def study(name, b_right):
        ts = [trial("a", batch_size=8, best_val_acc=0.90, test_acc=100 / N_TEST),
              trial("b", batch_size=32, best_val_acc=0.85, test_acc=int(b_right.sum()) / N_TEST)]
        return line(report(tmp_path, name, ts, predictions=[pa, preds("b", b_right, 0.8)]), "runner-up by val")
    same = study("same", correct_mask(100))
    assert "within noise (identical answers on every test example" in same and "beyond noise" not in same
    s = study("b_better", correct_mask(100) | half)  # b right on those 25 rows as well: 0 vs 25 discordant
    assert "beyond noise" in s and "(0 vs 25)" in s
