"""bench/accuracy.py: its interval and test statistics, and one tiny end-to-end run on a real task."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("bench_accuracy", ROOT / "bench" / "accuracy.py")
accuracy = importlib.util.module_from_spec(spec)
spec.loader.exec_module(accuracy)


def test_wilson_interval_is_informative_at_zero_and_matches_the_textbook_value():
    lo, hi = accuracy.wilson(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.161, abs=1e-3)  # a bootstrap would say [0, 0]
    lo, hi = accuracy.wilson(10, 20)
    assert (lo, hi) == (pytest.approx(0.299, abs=1e-3), pytest.approx(0.701, abs=1e-3))


def test_sign_test_needs_six_one_sided_wins_for_five_percent():
    assert accuracy.sign_test(0, 0) == 1.0
    assert accuracy.sign_test(5, 0) == pytest.approx(0.0625)
    assert accuracy.sign_test(6, 0) < 0.05 and accuracy.sign_test(3, 3) == 1.0


def test_a_tiny_run_scores_vote_and_rescore_and_draws_the_curve(tmp_path):
    from trm_kaggle.checkpoint import save_checkpoint
    from trm_kaggle.model import TinyRecursiveModel, TRMConfig

    torch.manual_seed(0)
    model = TinyRecursiveModel(TRMConfig(hidden_size=32, num_heads=2, L_layers=1, H_cycles=1, L_cycles=1,
                                         puzzle_emb_len=1, puzzle_emb_ndim=32, halt_max_steps=1,
                                         forward_dtype="float32"))
    save_checkpoint(model, tmp_path / "ckpt")
    out = tmp_path / "out"
    data = ROOT / "sample_data"
    accuracy.main(["--checkpoint", str(tmp_path / "ckpt"), "--challenges", str(data / "small_challenges.json"),
                   "--solutions", str(data / "small_solutions.json"), "--tasks", "1",
                   "--small-grids", "--budget", "1s", "--curve-points", "2", "--variants", "2",
                   "--rescore-augmentations", "2", "--global-batch", "4", "--out", str(out)])
    report = json.loads((out / "results.json").read_text())
    assert report["tasks"] == 1 and set(report["results"]) == {"vote", "rescore"}
    assert report["results"]["vote"]["pass@2"]["ci95_wilson"][1] > 0.5  # one task: a wide interval
    assert [p["step"] for p in report["curve"]][0] == 0
    assert (out / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
