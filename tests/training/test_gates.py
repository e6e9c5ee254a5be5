"""gates.judge, int8_drop and better_by on hand-made metrics: every outcome of the promotion gate."""
from __future__ import annotations

import math

import pytest

from millrace.training import gates
from millrace.training.spec import ModelSpec

TABULAR = {"family": "tabular", "examples": {"source": "ratings"}, "label": {"column": "rating", "op": ">=", "value": 4},
           "features": ["user_activity:rating_mean_all"]}
TWO_TOWER = {"family": "two_tower", "examples": {"source": "ratings"},
             "label": {"column": "rating", "op": ">=", "value": 4},
             "user": {"key": "userId"}, "item": {"key": "movieId"}}
REGRESSION = {**TABULAR, "task": "regression", "label": {"column": "rating"}}


def _spec(base, **gates_):
    return ModelSpec(**{**base, "gates": gates_})


def _champion(metric, comparable=True, how="re-scored on this holdout"):
    return {"version": "1", "metric": metric, "how": how, "comparable": comparable}


def test_better_by_follows_the_metric_direction():
    assert gates.better_by("auc", 0.8, 0.7) == pytest.approx(0.1)
    assert gates.better_by("rmse", 0.8, 0.7) == pytest.approx(-0.1)  # lower is better


def test_int8_drop_is_the_loss_only():
    spec = _spec(TABULAR)
    assert gates.int8_drop(spec, {"auc": 0.80}, {"auc": 0.78}) == pytest.approx(0.02)
    assert gates.int8_drop(spec, {"auc": 0.80}, {"auc": 0.82}) == 0.0
    reg = _spec(REGRESSION)
    assert gates.int8_drop(reg, {"rmse": 1.0}, {"rmse": 1.1}) == pytest.approx(0.1)


CASES = [  # (spec, metrics, baseline, champion, passed, words in the summary)
    (_spec(TABULAR), {"auc": 0.7}, {"auc": 0.5}, None, True, "no champion yet"),
    (_spec(TABULAR, thresholds={"auc": 0.75}), {"auc": 0.7}, {}, None, False, "FAIL: auc 0.7000 >= 0.75"),
    (_spec(TABULAR, thresholds={"logloss": 0.5}), {"auc": 0.7, "logloss": 0.4}, {}, None, True,
     "pass: logloss 0.4000 <= 0.5"),
    (_spec(REGRESSION, thresholds={"rmse": 1.0}), {"rmse": 1.2}, {}, None, False, "FAIL: rmse 1.2000 <= 1"),
    (_spec(TWO_TOWER), {"recall_at_10": 0.1}, {"recall_at_10": 0.12}, None, False, "vs popularity baseline"),
    (_spec(TWO_TOWER, beat_baseline=False), {"recall_at_10": 0.1}, {"recall_at_10": 0.12}, None, True, "no champion"),
    (_spec(TWO_TOWER), {"recall_at_10": 0.13}, {"recall_at_10": 0.12}, None, True, "pass: recall_at_10 0.1300 vs "),
    (_spec(TABULAR), {"auc": 0.70}, {}, _champion(0.70), True, "+0.0000, needs +0"),
    (_spec(TABULAR, min_improvement=0.01), {"auc": 0.705}, {}, _champion(0.70), False, "FAIL: auc 0.7050 vs champion v1"),
    (_spec(TABULAR, min_improvement=0.01), {"auc": 0.72}, {}, _champion(0.70), True, "pass: auc 0.7200 vs champion v1"),
    (_spec(REGRESSION), {"rmse": 0.9}, {}, _champion(1.0), True, "+0.1000"),
    (_spec(REGRESSION), {"rmse": 1.1}, {}, _champion(1.0), False, "-0.1000"),
    (_spec(TABULAR), {"auc": 0.9}, {}, _champion(0.5, False, "cannot re-score: inputs gone"), False,
     "cannot be re-scored on this holdout (cannot re-score: inputs gone)"),
    (_spec(TABULAR), {"auc": 0.9}, {}, _champion(math.nan, False, "cannot re-score: no metric"), False,
     "not comparable (fix: train with --force"),
]


@pytest.mark.parametrize("spec, metrics, baseline, champion, passed, words", CASES)
def test_judge(spec, metrics, baseline, champion, passed, words):
    verdict = gates.judge(spec, metrics, baseline, champion)
    assert verdict.passed is passed, verdict.summary
    assert words in verdict.summary
    assert (verdict.incomparable is not None) == (champion is not None and not champion["comparable"])


def test_force_moves_past_an_incomparable_champion_but_not_past_other_gates():
    champion = _champion(0.95, False, "cannot re-score: inputs gone")
    forced = gates.judge(_spec(TABULAR), {"auc": 0.9}, {}, champion, force=True)
    assert forced.passed and "forced: champion v1 cannot be re-scored" in forced.summary and forced.incomparable
    still = gates.judge(_spec(TABULAR, thresholds={"auc": 0.95}), {"auc": 0.9}, {}, champion, force=True)
    assert not still.passed
    # force changes nothing when the champion was re-scored on the same holdout
    assert not gates.judge(_spec(TABULAR), {"auc": 0.6}, {}, _champion(0.7), force=True).passed
