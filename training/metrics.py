"""Metrics, in plain numpy so torch, onnxruntime and baselines are judged by the same code.

Ranking (two_tower): for each query, the top ``k`` of its candidate scores (candidates it already
interacted with are excluded beforehand). ``recall_at_k`` = hits / min(k, relevant) so a perfect
ranking scores 1 even for users with more than k relevant items; ``ndcg_at_k`` uses binary gains.
"""
from __future__ import annotations

import numpy as np


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k best scores per row, best first."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def ranking(scores: np.ndarray, relevant: list[np.ndarray], k: int = 10) -> dict[str, float]:
    """``relevant[i]``: candidate column indices relevant to query i (non-empty)."""
    if not relevant:
        return {f"recall_at_{k}": 0.0, f"ndcg_at_{k}": 0.0}
    top = top_k(scores, k)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    recalls, ndcgs = np.zeros(len(relevant)), np.zeros(len(relevant))
    for i, rel in enumerate(relevant):
        hits = np.isin(top[i], rel)
        ideal = min(k, len(rel))
        recalls[i] = hits.sum() / ideal
        ndcgs[i] = (hits * discounts[:len(hits)]).sum() / discounts[:ideal].sum()
    return {f"recall_at_{k}": float(recalls.mean()), f"ndcg_at_{k}": float(ndcgs.mean())}


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half)."""
    labels = labels.astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def classification(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    p = np.clip(probabilities.astype(np.float64), 1e-7, 1 - 1e-7)
    y = labels.astype(np.float64)
    return {"auc": auc(labels, p), "accuracy": float(((p >= 0.5) == labels.astype(bool)).mean()),
            "logloss": float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())}


def regression(targets: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    err = predictions.astype(np.float64).ravel() - targets.astype(np.float64)
    return {"rmse": float(np.sqrt((err ** 2).mean())), "mae": float(np.abs(err).mean())}
