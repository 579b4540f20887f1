"""The benchmark scripts still run end to end (one tiny step each); they are timed by hand, never here."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
TINY = ["hidden_size=16", "num_heads=2", "H_cycles=1", "L_cycles=1", "halt_max_steps=2",
        "--batch", "2", "--steps", "1", "--warmup", "1", "--peak-tflops", "1",
        "--data", str(BENCH.parent / "sample_data" / "small_challenges.json")]


def _script(name: str, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # the scripts import their sibling _common
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("extra", [[], ["--compare", "f32", "bf16"]])
def test_train_bench_times_real_trainer_steps_and_prints_mfu(extra, monkeypatch, capsys):
    runners = _script("train", monkeypatch).main(TINY + extra)
    out = capsys.readouterr().out
    assert all(len(r.times) == 1 and r.times[0] > 0 for r in runners)
    assert "samples/s" in out and "MFU" in out and "peak MiB" in out
    if extra:
        assert "bf16 vs f32" in out


def test_infer_bench_times_one_run_votes_batch_and_prints_variants_per_second(monkeypatch, capsys):
    runners = _script("infer", monkeypatch).main(TINY + ["--act-steps", "1"])
    out = capsys.readouterr().out
    assert len(runners) == 1 and len(runners[0].times) == 1
    assert "variants/s" in out and "MFU" in out
