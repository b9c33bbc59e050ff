"""Classification metrics (numpy + scikit-learn only). Names match docs/training.md and metrics.json."""
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
    """Charades-style multi-label metrics over the videos that have at least one label.

    mAP as the official Charades evaluation (``Charades_v1_classify.m``; its Python port
    gsig/charades-algorithms ``pytorch/utils/map.py`` ``mAP``): per class, non-interpolated AP
    over videos (the mean of the precision at each positive, ranked by score); videos without any
    label are excluded; classes without a positive among the rest are excluded from the mean and
    counted (``mAP_excluded_classes``). ``top1``: the best-scoring class is a true label;
    ``macro_f1`` at probability 0.5 (logit 0). ``ap``: one entry per class, None when excluded.
    """
    from sklearn.metrics import f1_score

    labelled = targets.sum(axis=1) > 0
    logits, targets = logits[labelled], targets[labelled]
    if len(targets) == 0:
        return {}
    has_pos = targets.sum(axis=0) > 0
    ap = [average_precision(logits[:, c], targets[:, c]) if has_pos[c] else None for c in range(targets.shape[1])]
    scored = [v for v in ap if v is not None]
    pred = (logits > 0).astype(int)
    return {
        "mAP": float(np.mean(scored)) if scored else 0.0,
        "top1": float(targets[np.arange(len(targets)), logits.argmax(axis=1)].mean()),
        "macro_f1": float(f1_score(targets, pred, average="macro", zero_division=0)),
        "mAP_excluded_classes": int((~has_pos).sum()),
        "unlabelled_excluded": int((~labelled).sum()),
        "ap": ap,
    }


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """Non-interpolated AP as ``charades-algorithms`` ``map.py`` computes it: rank by score
    (descending; ties keep video order, where the original's quicksort is arbitrary), then the
    mean of the precision at each positive. Equals scikit-learn's average_precision_score when
    no scores tie."""
    order = np.argsort(-scores, kind="stable")
    tp = positives[order] > 0
    precision = np.cumsum(tp) / np.arange(1, len(tp) + 1)
    return float(precision[tp].sum() / tp.sum())


def selection(logits: np.ndarray, targets: np.ndarray, multi: bool) -> dict:
    """The cheap per-epoch validation metrics (same definitions as above): top1 and top5, or mAP."""
    if multi:
        return {"mAP": multi_label(logits, targets)["mAP"]}
    k = min(5, logits.shape[1])
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return {"top1": float((top[:, 0] == targets).mean()), "top5": float((top == targets[:, None]).any(axis=1).mean())}
