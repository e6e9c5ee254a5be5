"""training/metrics.py against independent references: each metric's definition written out
by brute force here (pairs for AUC, sorted lists for recall@k and NDCG@k), and scikit-learn's
implementation as well where it is installed (it is in the development environment)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from millrace.training import metrics

try:
    from sklearn import metrics as sklearn_metrics
except ImportError:  # the brute-force references still run
    sklearn_metrics = None
needs_sklearn = pytest.mark.skipif(sklearn_metrics is None, reason="scikit-learn is not installed")


def _auc_brute(labels, scores):
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def _ndcg_brute(scores, relevant, k):
    out = []
    for row, rel in zip(scores, relevant):
        ranked = sorted(range(len(row)), key=lambda j: -row[j])[:k]
        dcg = sum(1 / math.log2(rank + 2) for rank, j in enumerate(ranked) if j in set(rel.tolist()))
        ideal = sum(1 / math.log2(rank + 2) for rank in range(min(k, len(rel))))
        out.append(dcg / ideal)
    return sum(out) / len(out)


def _recall_brute(scores, relevant, k):
    out = []
    for row, rel in zip(scores, relevant):
        ranked = sorted(range(len(row)), key=lambda j: -row[j])[:k]
        out.append(len(set(ranked) & set(rel.tolist())) / min(k, len(rel)))
    return sum(out) / len(out)


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(300) < 0.3
    scores = np.round(rng.random(300) + labels * 0.3, 1)  # rounding makes many ties
    assert metrics.auc(labels, scores) == pytest.approx(_auc_brute(labels, scores), abs=1e-12)
    if sklearn_metrics is not None:
        assert metrics.auc(labels, scores) == pytest.approx(sklearn_metrics.roc_auc_score(labels, scores), abs=1e-12)


def test_auc_edges():
    assert metrics.auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert metrics.auc(np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.3, 0.4])) == 0.0
    assert metrics.auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5
    assert math.isnan(metrics.auc(np.array([1, 1]), np.array([0.1, 0.2])))  # one class: undefined


@pytest.mark.parametrize("seed, k", [(0, 10), (1, 3), (2, 1), (3, 50)])
def test_ranking_matches_references(seed, k):
    rng = np.random.default_rng(seed)
    queries, candidates = 40, 30
    scores = rng.random((queries, candidates))  # continuous: no ties, so every reference ranks alike
    relevant = [rng.choice(candidates, rng.integers(1, 15), replace=False) for _ in range(queries)]
    got = metrics.ranking(scores, relevant, k)
    assert got[f"recall_at_{k}"] == pytest.approx(_recall_brute(scores, relevant, k), abs=1e-12)
    assert got[f"ndcg_at_{k}"] == pytest.approx(_ndcg_brute(scores, relevant, k), abs=1e-12)
    if sklearn_metrics is None:
        return
    truth = np.zeros_like(scores)
    for i, rel in enumerate(relevant):
        truth[i, rel] = 1
    assert got[f"ndcg_at_{k}"] == pytest.approx(sklearn_metrics.ndcg_score(truth, scores, k=k), abs=1e-12)


def test_ranking_perfect_and_worst():
    scores = np.array([[3.0, 2.0, 1.0, 0.0]])
    assert metrics.ranking(scores, [np.array([0, 1])], k=2) == {"recall_at_2": 1.0, "ndcg_at_2": 1.0}
    assert metrics.ranking(scores, [np.array([2, 3])], k=2) == {"recall_at_2": 0.0, "ndcg_at_2": 0.0}
    # more relevant items than k: a perfect top-k still scores 1
    assert metrics.ranking(scores, [np.array([0, 1, 2])], k=2)["recall_at_2"] == 1.0
    assert metrics.ranking(scores, [], k=10) == {"recall_at_10": 0.0, "ndcg_at_10": 0.0}


def test_top_k_is_best_first():
    scores = np.array([[0.1, 0.9, 0.5, 0.7]])
    assert metrics.top_k(scores, 3).tolist() == [[1, 3, 2]]
    assert metrics.top_k(scores, 10).tolist() == [[1, 3, 2, 0]]  # k larger than the candidates


@needs_sklearn
def test_classification_and_regression_match_sklearn():
    rng = np.random.default_rng(7)
    labels = rng.random(200) < 0.4
    p = np.clip(rng.random(200) * 0.6 + labels * 0.3, 0, 1)
    got = metrics.classification(labels, p)
    assert got["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(labels, p >= 0.5))
    assert got["logloss"] == pytest.approx(sklearn_metrics.log_loss(labels, np.clip(p, 1e-7, 1 - 1e-7)), rel=1e-9)
    assert got["auc"] == pytest.approx(sklearn_metrics.roc_auc_score(labels, p))
    y, pred = rng.normal(size=100), rng.normal(size=100)
    got = metrics.regression(y, pred)
    assert got["rmse"] == pytest.approx(math.sqrt(sklearn_metrics.mean_squared_error(y, pred)))
    assert got["mae"] == pytest.approx(sklearn_metrics.mean_absolute_error(y, pred))
