"""The gates a version must pass: INT8 against FP32, absolute thresholds, the baseline, the champion."""
from __future__ import annotations

from dataclasses import dataclass, field

from millrace.training.spec import HIGHER_IS_BETTER, ModelSpec


def better_by(metric: str, new: float, old: float) -> float:
    """How much ``new`` is better than ``old`` (negative: worse), whichever way the metric points."""
    return new - old if HIGHER_IS_BETTER[metric] else old - new


def int8_drop(spec: ModelSpec, fp32: dict, int8: dict) -> float:
    """How much INT8 loses on the primary metric against FP32 (0 when it gains)."""
    return max(0.0, -better_by(spec.primary, int8[spec.primary], fp32[spec.primary]))


@dataclass
class Verdict:
    passed: bool = True
    reasons: list[str] = field(default_factory=list)
    incomparable: str | None = None  # why the champion could not be judged on this holdout

    def check(self, ok: bool, text: str) -> None:
        self.passed &= ok
        self.reasons.append(("pass: " if ok else "FAIL: ") + text)

    @property
    def summary(self) -> str:
        return "; ".join(self.reasons)


def judge(spec: ModelSpec, metrics: dict, baseline: dict, champion: dict | None, force: bool = False) -> Verdict:
    """``champion``: {"version", "metric", "how", "comparable"} of the current champion, or None.
    ``comparable`` is False when it could not be re-scored on this holdout: its metric then comes
    from another holdout, so the gate refuses to move champion unless ``force``."""
    verdict = Verdict()
    primary, value = spec.primary, metrics[spec.primary]
    for metric, limit in spec.gates.thresholds.items():
        higher = HIGHER_IS_BETTER[metric]
        ok = metrics[metric] >= limit if higher else metrics[metric] <= limit
        verdict.check(ok, f"{metric} {metrics[metric]:.4f} {'>=' if higher else '<='} {limit:g}")
    if spec.family == "two_tower" and spec.gates.beat_baseline:
        base = baseline[primary]
        verdict.check(better_by(primary, value, base) > 0, f"{primary} {value:.4f} vs popularity baseline {base:.4f}")
    if champion is None:
        verdict.reasons.append("no champion yet")
    elif not champion.get("comparable", True):
        verdict.incomparable = (f"champion v{champion['version']} cannot be re-scored on this holdout "
                                f"({champion['how']}); its {primary} {champion['metric']:.4f} is from another holdout")
        if force:
            verdict.reasons.append(f"forced: {verdict.incomparable}, not compared")
        else:
            verdict.check(False, f"{verdict.incomparable}, not comparable (fix: train with --force to move "
                                 f"champion anyway)")
    else:
        gain = better_by(primary, value, champion["metric"])
        verdict.check(gain >= spec.gates.min_improvement,
                      f"{primary} {value:.4f} vs champion v{champion['version']} {champion['metric']:.4f} "
                      f"({champion['how']}): {gain:+.4f}, needs {spec.gates.min_improvement:+g}")
    return verdict
