"""The learning-curve PNG: running means from a training history, drawn without pyplot."""

from __future__ import annotations

import pytest

from trm_kaggle.learning_curve import history_points, plot_learning_curve


def test_history_is_thinned_to_running_loss_and_exact_accuracy_of_halted_rows():
    history = [{"step": s, "loss": 2.0 - s / 100, "halted": 4, "exact": 1 if s > 50 else 0} for s in range(1, 101)]
    points = history_points(history, max_points=10)
    assert len(points) == 10
    assert points[0]["step"] == 10 and points[-1]["step"] == 100
    assert points[0]["train_exact"] == 0.0 and points[-1]["train_exact"] == pytest.approx(0.25)
    assert points[-1]["loss"] < points[0]["loss"]
    assert "train_exact" not in history_points([{"step": 1, "loss": 1.0, "halted": 0, "exact": 0}])[0]


def test_plot_writes_a_png_with_accuracy_and_loss_and_skips_an_empty_curve(tmp_path):
    pytest.importorskip("matplotlib")
    points = [{"step": 0, "train_exact": 0.0, "heldout_pass2": 0.0},
              {"step": 50, "train_exact": 0.2, "heldout_pass2": 0.05, "loss": 1.2}]
    path = plot_learning_curve(tmp_path / "curve.png", points, title="t", note="4 tasks, seed 0")
    assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_learning_curve(tmp_path / "none.png", []) is None
    assert not (tmp_path / "none.png").exists()
