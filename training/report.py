"""Human-readable report of a training run (what ``argus train`` prints)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from training.outcome import TrainingOutcome


def _g(v: float) -> str:
    return f"{v:.4g}"


def render_report(outcome: TrainingOutcome) -> str:
    """Plain-text report: data, split, network, training and early stopping, the fit
    verdict with its numbers, calibration, export parity, gradient check and the test
    evaluation (per-class and macro figures, confusion matrix)."""
    c = outcome.config
    ds = outcome.dataset
    h = outcome.history
    cal = outcome.calibration
    s = outcome.split_sizes
    b = outcome.best_epoch - 1
    lines = ["Argus training report", "=====================", ""]

    lines.append(
        f"Data           {ds.source}: {ds.n_rows} rows, {ds.n_features} features, "
        f"{ds.n_classes} classes (fingerprint {ds.fingerprint[:16]})"
    )
    lines.append(
        f"Split          train {s['train']} / validation {s['val']} / test {s['test']} rows "
        f"(stratified, seed {c.seed})"
    )
    widths = " -> ".join(f"{w} {c.activation}" for w in c.hidden)
    momentum = f"Nesterov momentum {c.momentum:g}" if c.nesterov else f"momentum {c.momentum:g}"
    lines.append(
        f"Network        {ds.n_features} standardised -> {widths} -> {ds.n_classes} softmax; "
        f"{c.weight_init} init"
    )
    lines.append(
        f"Optimiser      SGD lr {c.learning_rate:g}, {momentum}, l2 {c.l2:g}, batch {c.batch_size}"
    )
    lines.append(
        f"Training       {h['epochs_run']} of at most {c.max_epochs} epochs in "
        f"{outcome.training_time_s:.1f} s; best epoch {outcome.best_epoch}: train loss "
        f"{_g(h['train_loss'][b])}, val loss {_g(h['val_loss'][b])}, train accuracy "
        f"{h['train_accuracy'][b]:.4f}, val accuracy {h['val_accuracy'][b]:.4f}"
    )
    if h["stop_reason"] == "early stopping":
        stopping = (
            f"stopped after epoch {h['epochs_run']}: no validation-loss improvement of "
            f"{c.min_delta:g} for {c.patience} epochs; weights of epoch {outcome.best_epoch} "
            "restored"
        )
    else:
        stopping = (
            f"not triggered (patience {c.patience}, min_delta {c.min_delta:g}); ran to "
            f"max_epochs, weights of epoch {outcome.best_epoch} kept"
        )
    lines.append(f"Early stopping {stopping}")
    v = outcome.verdict
    lines.append(f"Verdict        {v.kind.upper()}: {v.reason}")
    numbers = ", ".join(
        f"{k} {val}" if isinstance(val, int) else f"{k} {_g(val)}" for k, val in v.numbers.items()
    )
    lines.append(f"               ({numbers})")
    lines.append(
        f"Calibration    temperature {cal.temperature:.4f} fitted on validation; ECE "
        f"{cal.ece_before:.4f} -> {cal.ece_after:.4f} ({cal.n_bins} bins), NLL "
        f"{cal.nll_before:.4f} -> {cal.nll_after:.4f}"
    )
    lines.append(
        f"ONNX export    {len(outcome.onnx_bytes)} bytes; parity with torch on {s['test']} test "
        f"rows: max abs difference {outcome.parity_max_abs_diff:.3g}"
    )
    g = outcome.gradient_check
    if g is None:
        lines.append("Gradient check not run")
    else:
        lines.append(
            f"Gradient check {'passed' if g.passed else 'FAILED'}: max relative error "
            f"{g.max_relative_error:.3g} over {g.n_checked} parameters (eps {g.eps:g}); "
            f"{g.n_above_tolerance} above tolerance {g.tolerance:g}, of which {g.n_failed} with "
            f"an absolute error above {g.min_abs_error:g}; max abs error {g.max_abs_error:.3g}"
        )
    lines.append(f"Wall time      {outcome.wall_time_s:.1f} s")
    lines += ["", f"Test evaluation of the calibrated model ({s['test']} rows)", ""]
    lines.append(outcome.evaluation.stats(class_names=list(ds.class_names)))
    return "\n".join(lines).rstrip() + "\n"
