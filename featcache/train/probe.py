"""Closed-form baselines on pooled per-video features, as DINOv2 evaluates frozen features.

A video's feature is the mean over its frames of the per-frame CLS token, mean patch token, or
both concatenated (``feature``). Then:

- ``knn``: DINOv2's weighted k-NN (``facebookresearch/dinov2`` ``dinov2/eval/knn.py``): features
  L2-normalised, cosine similarity to every training video, the k most similar vote with weight
  ``exp(similarity / T)``, T = 0.07; k in {10, 20} chosen on val.
- ``logreg``: scikit-learn logistic regression (L-BFGS, multinomial) with the inverse
  regularisation C chosen on val from a log grid (DINOv2's ``eval/log_regression.py`` searches C
  on a held-out split the same way), then refit on train.

"Probe" here means these closed-form baselines only (``probe:`` in their config.yaml, the
``featcache probe`` command); the papers' *linear* or *attentive probe* is a trained head
(``--head linear``, ``--head attentive``).

Same outputs as ``featcache train``: config.yaml, metrics.json (val/..., test/..., and the chosen
``knn/k`` or ``logreg/C``), predictions_<split>.csv, per_class_<split>.csv, confusion matrices.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from featcache.cache.dataset import Task
from featcache.cache.store import open_cache
from featcache.data.annotations import annotate
from featcache.errors import FeatcacheError, OptionError
from featcache.spec.config import TrainConfig
from featcache.train.evaluate import read_splits, report_split
from featcache.train.meta import ProbeChoice, run_meta
from featcache.train.rundir import previous_run, write_config, write_metrics

METHODS = ("knn", "logreg")
FEATURES = ("cls", "mean", "cls_mean")
KNN_K = (10, 20)
KNN_T = 0.07
LOGREG_C = tuple(10.0 ** p for p in range(-4, 5))


def video_features(x: torch.Tensor, prefix: int, feature: str) -> np.ndarray:
    """(V, T, N, C) float16 tokens (in memory or streamed) -> (V, D) float32: the per-frame
    feature averaged over time, 256 videos at a time."""
    if feature in ("cls", "cls_mean") and not prefix:
        raise FeatcacheError(f"--feature {feature}: the view has no CLS token; use mean")
    if feature in ("mean", "cls_mean") and x.shape[2] == prefix:
        raise FeatcacheError(f"--feature {feature}: the view has no patch tokens; use cls")
    out = []
    for i in range(0, len(x), 256):
        chunk = x[i:i + 256].float()
        parts = {"cls": [chunk[:, :, 0]], "mean": [chunk[:, :, prefix:].mean(2)],
                 "cls_mean": [chunk[:, :, 0], chunk[:, :, prefix:].mean(2)]}[feature]
        out.append(torch.cat(parts, dim=-1).mean(dim=1).numpy())  # (V, D)
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def knn_scores(train: np.ndarray, train_y: np.ndarray, query: np.ndarray, k: int, classes: int) -> np.ndarray:
    """Class scores (votes normalised to sum 1) of DINOv2's temperature-weighted k-NN."""
    a = train / np.linalg.norm(train, axis=1, keepdims=True).clip(1e-12)
    q = query / np.linalg.norm(query, axis=1, keepdims=True).clip(1e-12)
    sims = q @ a.T  # (Q, V_train) cosine
    k = min(k, len(a))
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    weights = np.exp(np.take_along_axis(sims, top, axis=1) / KNN_T)  # (Q, k)
    votes = np.zeros((len(q), classes))
    for c in range(classes):
        votes[:, c] = (weights * (train_y[top] == c)).sum(axis=1)
    return votes / votes.sum(axis=1, keepdims=True)


def run_probe(cache_path: str, cfg: TrainConfig, out_dir: str, method: str, feature: str = "cls_mean",
              overwrite: bool = False, echo=None) -> dict:
    if method not in METHODS:
        raise OptionError("method", f"unknown {method!r}; expected one of {', '.join(METHODS)}")
    if feature not in FEATURES:
        raise OptionError("feature", f"unknown {feature!r}; expected one of {', '.join(FEATURES)}")
    cache = annotate(open_cache(cache_path), cfg.manifest, cfg.val_fraction)  # labels and splits: the manifest's, or the store's
    for line in cache.annotations.summary() if echo else ():
        echo(line)
    cfg.view.check(cache.facts.shape)
    stale = previous_run(out_dir, resume=False, overwrite=overwrite)
    data = read_splits(cache, cfg.view)
    labels = [ls for d in data.values() for ls in d.labels]
    if any(len(ls) != 1 for ls in labels):
        raise FeatcacheError("probe: every video needs exactly one label (multi-label or unlabelled videos: "
                             "train --head linear --set task=multi)")
    train, val = data["train"], data["val"]
    if not train.video_ids or not val.video_ids:
        raise FeatcacheError(f"{cache_path}: the probes choose their hyper-parameter on val; "
                             "the cache needs train and val videos")
    task = Task(sorted({ls[0] for ls in labels}), multi=False)
    pairs = {s: (video_features(d.x, d.num_prefix_tokens, feature), task.targets(d.labels).numpy())
             for s, d in data.items() if d.video_ids}  # split -> (features, class indices)
    predict, choice = _fit(method, pairs["train"], pairs["val"], len(task.classes))
    for path in stale:
        os.remove(path)
    os.makedirs(out_dir, exist_ok=True)
    write_config(out_dir, run_meta(cache, task.classes, False, cfg, head=False,
                                   probe=ProbeChoice(method=method, feature=feature, extra=dict(choice))))
    results = dict(choice)
    for split in ("val", "test"):
        if split not in pairs:
            continue
        scores = predict(pairs[split][0])
        logits = np.log(np.clip(scores, 1e-12, 1.0))  # monotone: the metrics read the ranking
        results.update(report_split(task, split, "", data[split].video_ids, data[split].labels, logits, scores, out_dir))
    write_metrics(out_dir, results)
    return results


def _fit(method: str, train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray], classes: int):
    """(scores function, chosen hyper-parameter) with the hyper-parameter chosen on val top-1;
    ``train`` and ``val``: (features, class indices)."""
    (x_train, y_train), (x_val, y_val) = train, val
    if method == "knn":
        def acc(k):
            return (knn_scores(x_train, y_train, x_val, k, classes).argmax(1) == y_val).mean()

        k = max(KNN_K, key=lambda k: (acc(k), -k))  # ties: the smaller k
        return (lambda q: knn_scores(x_train, y_train, q, k, classes)), {"knn/k": k, "knn/T": KNN_T}
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_train)
    xt, xv = scaler.transform(x_train), scaler.transform(x_val)
    fits = {c: LogisticRegression(C=c, max_iter=2000).fit(xt, y_train) for c in LOGREG_C}
    best = max(LOGREG_C, key=lambda c: (fits[c].score(xv, y_val), -c))  # ties: stronger regularisation
    model = fits[best]

    def scores(q):
        out = np.zeros((len(q), classes))
        out[:, model.classes_] = model.predict_proba(scaler.transform(q))
        return out

    return scores, {"logreg/C": best}
