"""Evaluation metrics with scikit-learn: confusion matrix, classification report, AUROC with a
bootstrap interval, ROC and calibration curves, threshold and temperature choice."""

from __future__ import annotations

import math

import numpy as np


def auroc(y: np.ndarray, p: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y)
    if len(np.unique(y)) < 2:
        return None
    return float(roc_auc_score(y, p))


def bootstrap_auroc_ci(y: np.ndarray, p: np.ndarray, n: int = 1000, seed: int = 0,
                       alpha: float = 0.05) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the AUROC (resampling images)."""
    from sklearn.metrics import roc_auc_score

    y, p = np.asarray(y), np.asarray(p)
    if len(np.unique(y)) < 2:
        return None
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        idx = rng.integers(0, len(y), len(y))
        if len(np.unique(y[idx])) < 2:
            continue
        values.append(roc_auc_score(y[idx], p[idx]))
    lo, hi = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def youden_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The threshold maximising sensitivity + specificity - 1 on (y, p) (ties: the higher one)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(y, p)
    j = tpr - fpr
    best = np.flatnonzero(j == j.max())
    t = float(thr[best].min()) if len(best) else 0.5
    return min(max(t, 1e-6), 1.0 - 1e-6)


def sensitivity_threshold(y: np.ndarray, p: np.ndarray, target: float) -> float:
    """The highest threshold whose sensitivity on (y, p) is at least ``target``.

    Spends no more sensitivity than the target allows and keeps all the specificity it can.
    """
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(y, p)
    ok = np.flatnonzero(tpr >= target)
    t = float(thr[ok[0]]) if len(ok) else float(np.min(p))
    return min(max(t, 1e-6), 1.0 - 1e-6)


def parse_threshold_rule(rule: str) -> float | None:
    """``youden`` -> None; ``sensitivity:T`` -> T (0 < T <= 1); anything else a ValueError."""
    if rule == "youden":
        return None
    if rule.startswith("sensitivity:"):
        try:
            target = float(rule.split(":", 1)[1])
        except ValueError:
            target = -1.0
        if 0.0 < target <= 1.0:
            return target
    raise ValueError(f"unknown threshold rule {rule!r}: use youden or sensitivity:TARGET with 0 < TARGET <= 1 "
                     "(e.g. sensitivity:0.97)")


def choose_threshold(y: np.ndarray, p: np.ndarray, rule: str) -> tuple[float, str]:
    """``rule``: ``youden`` or ``sensitivity:0.97``. Returns the threshold and the rule in words."""
    target = parse_threshold_rule(rule)
    if target is None:
        return youden_threshold(y, p), "Youden's J (max sensitivity + specificity - 1)"
    return sensitivity_threshold(y, p, target), f"the highest threshold with sensitivity >= {target:g}"


def fit_temperature(logits: np.ndarray, y: np.ndarray, iters: int = 200) -> float:
    """Temperature scaling (Guo et al. 2017): T minimising the NLL of sigmoid(logit / T) on (logits, y)."""
    import torch

    z = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    t = torch.as_tensor(np.asarray(y, dtype=np.float64))
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=iters)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z / log_t.exp(), t)
        loss.backward()
        return loss

    opt.step(closure)
    value = float(log_t.exp().item())
    return value if math.isfinite(value) and 0.05 < value < 20 else 1.0


def binary_report(y: np.ndarray, p: np.ndarray, threshold: float, names: tuple[str, str],
                  bootstrap: int = 1000, seed: int = 0) -> dict:
    """Everything the evaluation report shows for one head."""
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import brier_score_loss, classification_report, confusion_matrix, roc_curve

    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=np.float64)
    pred = (p >= threshold).astype(int)
    cm = confusion_matrix(y, pred, labels=[0, 1])
    tn, fp, fn, tp = (int(v) for v in cm.ravel())
    report = classification_report(y, pred, labels=[0, 1], target_names=list(names), output_dict=True, zero_division=0)
    out = {
        "n": int(len(y)),
        "positives": int(y.sum()),
        "threshold": float(threshold),
        "confusion_matrix": {"labels": list(names), "matrix": cm.tolist(), "tn": tn, "fp": fp, "fn": fn, "tp": tp},
        "classification_report": report,
        "accuracy": float((tp + tn) / max(len(y), 1)),
        "sensitivity": float(tp / (tp + fn)) if tp + fn else None,
        "specificity": float(tn / (tn + fp)) if tn + fp else None,
        "precision": float(tp / (tp + fp)) if tp + fp else None,
        "f1": float(report[names[1]]["f1-score"]),
        "auroc": auroc(y, p),
        "auroc_ci95": bootstrap_auroc_ci(y, p, bootstrap, seed) if bootstrap else None,
        "brier": float(brier_score_loss(y, p)) if len(np.unique(y)) > 1 else None,
        "majority_class_accuracy": float(max(y.mean(), 1 - y.mean())) if len(y) else None,
    }
    if len(np.unique(y)) > 1:
        fpr, tpr, thr = roc_curve(y, p)
        out["roc_curve"] = {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
        frac, mean_p = calibration_curve(y, p, n_bins=10, strategy="quantile")
        out["calibration_curve"] = {"mean_predicted": mean_p.tolist(), "fraction_positive": frac.tolist()}
    return out


def format_report(head: str, r: dict) -> str:
    """A plain-text report like scikit-learn's classification report, plus the headline numbers."""
    names = r["confusion_matrix"]["labels"]
    cm = r["confusion_matrix"]
    lines = [f"{head}: n={r['n']} ({r['positives']} positive), threshold {r['threshold']:.3f}",
             f"{'':>14}{'precision':>10}{'recall':>10}{'f1-score':>10}{'support':>10}"]
    for name in names:
        c = r["classification_report"][name]
        lines.append(f"{name:>14}{c['precision']:>10.3f}{c['recall']:>10.3f}{c['f1-score']:>10.3f}{int(c['support']):>10}")
    ci = r.get("auroc_ci95")
    auc = r.get("auroc")
    lines += [
        f"accuracy {r['accuracy']:.4f} (always-majority: {r['majority_class_accuracy']:.4f})",
        f"sensitivity {r['sensitivity'] if r['sensitivity'] is not None else float('nan'):.4f}  "
        f"specificity {r['specificity'] if r['specificity'] is not None else float('nan'):.4f}",
        f"AUROC {auc:.4f}" + (f" (95% CI {ci[0]:.4f}-{ci[1]:.4f})" if ci else "") if auc is not None else "AUROC n/a",
        f"confusion matrix (rows true {names[0]}/{names[1]}, cols predicted): "
        f"[[{cm['tn']}, {cm['fp']}], [{cm['fn']}, {cm['tp']}]]",
    ]
    return "\n".join(lines)


def save_report_plots(head: str, r: dict, path_png: str) -> None:
    """ROC and calibration curves side by side (matplotlib, Agg backend), written atomically."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    from cxr_viewer.common.fileio import atomic_path

    fig = Figure(figsize=(9, 4), dpi=100)
    ax1, ax2 = fig.subplots(1, 2)
    if "roc_curve" in r:
        ax1.plot(r["roc_curve"]["fpr"], r["roc_curve"]["tpr"], lw=2)
    ax1.plot([0, 1], [0, 1], "k--", lw=1)
    auc = r.get("auroc")
    ax1.set_title(f"ROC, {head}" + (f" (AUROC {auc:.3f})" if auc is not None else ""))
    ax1.set_xlabel("1 - specificity")
    ax1.set_ylabel("sensitivity")
    if "calibration_curve" in r:
        ax2.plot(r["calibration_curve"]["mean_predicted"], r["calibration_curve"]["fraction_positive"], "o-")
    ax2.plot([0, 1], [0, 1], "k--", lw=1)
    ax2.set_title("Calibration")
    ax2.set_xlabel("mean predicted probability")
    ax2.set_ylabel("fraction positive")
    fig.suptitle("Research use only. Not for diagnostic use.", fontsize=8, color="#b00000")
    fig.tight_layout()
    with atomic_path(path_png) as tmp:
        fig.savefig(tmp, format="png")
