"""Classification metrics (numpy + scikit-learn only). Names match the README and metrics.json."""
from __future__ import annotations

import numpy as np


def single_label(logits: np.ndarray, targets: np.ndarray, num_classes: int) -> tuple[dict, np.ndarray]:
    """Flat metrics and the (true x predicted) confusion matrix.

    top1/top5: accuracy of the best / any of the 5 best scores; mean_class_acc: mean over classes
    present in ``targets`` of their recall; macro_f1 over the classes present in targets or
    predictions; precision/recall per class (all classes, 0 where undefined).
    """
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    if len(targets) == 0:
        return {}, np.zeros((num_classes, num_classes), dtype=np.int64)
    pred = logits.argmax(axis=1)
    k = min(5, num_classes)
    top5 = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    cm = confusion_matrix(targets, pred, labels=np.arange(num_classes))
    present = cm.sum(axis=1) > 0
    per_class_recall = np.divide(np.diag(cm), cm.sum(axis=1), out=np.zeros(num_classes), where=present)
    precision, recall, _, _ = precision_recall_fscore_support(
        targets, pred, labels=np.arange(num_classes), zero_division=0)
    metrics = {
        "top1": float((pred == targets).mean()),
        "top5": float((top5 == targets[:, None]).any(axis=1).mean()),
        "mean_class_acc": float(per_class_recall[present].mean()),
        "macro_f1": float(f1_score(targets, pred, average="macro", zero_division=0)),
        "precision": [float(v) for v in precision],
        "recall": [float(v) for v in recall],
    }
    return metrics, cm


def multi_label(logits: np.ndarray, targets: np.ndarray) -> dict:
    """mAP: mean over classes with at least one positive of average precision; top1: the best
    scoring class is a true label; macro_f1 at a 0.5 probability threshold; ``ap``: one entry
    per class, None for a class without a positive (excluded from mAP)."""
    from sklearn.metrics import average_precision_score, f1_score

    if len(targets) == 0:
        return {}
    has_pos = targets.sum(axis=0) > 0
    ap = [float(average_precision_score(targets[:, c], logits[:, c])) if has_pos[c] else None
          for c in range(targets.shape[1])]
    scored = [v for v in ap if v is not None]
    pred = (logits > 0).astype(int)
    return {
        "mAP": float(np.mean(scored)) if scored else 0.0,
        "top1": float(targets[np.arange(len(targets)), logits.argmax(axis=1)].mean()),
        "macro_f1": float(f1_score(targets, pred, average="macro", zero_division=0)),
        "ap": ap,
    }


def selection(logits: np.ndarray, targets: np.ndarray, multi: bool) -> dict:
    """The cheap per-epoch validation metrics (same definitions as above): top1 and top5, or mAP."""
    if multi:
        return {"mAP": multi_label(logits, targets)["mAP"]}
    k = min(5, logits.shape[1])
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return {"top1": float((top[:, 0] == targets).mean()), "top5": float((top == targets[:, None]).any(axis=1).mean())}
