"""benchmarks/dialogue_eval.py's statistics: the ratio interval and the spread of paired differences."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "dialogue_eval.py"
_spec = importlib.util.spec_from_file_location("dialogue_eval", SCRIPT)
dialogue_eval = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dialogue_eval)


def test_paired_spread_counts_and_quantiles() -> None:
    auto = np.array([1.0, 0.5, 0.0, 0.3, 0.3])
    other = np.array([0.5, 0.5, 0.2, 0.3, 0.0])
    spread = dialogue_eval.paired_spread(auto, other)
    assert (spread["better"], spread["same"], spread["worse"]) == (2, 2, 1)
    assert spread["diff_p10_p25_p50_p75_p90"][2] == 0.0  # median of [0.5, 0, -0.2, 0, 0.3]
    assert spread["diff_p10_p25_p50_p75_p90"][0] < 0 < spread["diff_p10_p25_p50_p75_p90"][-1]


def test_ratio_interval_brackets_the_ratio() -> None:
    rng = np.random.default_rng(1)
    other = rng.uniform(0, 1, 200)
    auto = other * 1.2
    ratio, low, high = dialogue_eval.ratio_interval(auto, other)
    assert (
        abs(ratio - 1.2) < 1e-9 and abs(low - 1.2) < 1e-6 and abs(high - 1.2) < 1e-6
    )  # the same ratio in every resample
    noisy = other + rng.normal(0, 0.2, 200)
    ratio, low, high = dialogue_eval.ratio_interval(noisy, other)
    assert low < ratio < high
