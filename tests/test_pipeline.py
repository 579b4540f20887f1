"""The whole `run` job on real ARC tasks with a tiny checkpoint: deadlines on an injected clock, resume after a
SIGKILL, and a short end-to-end run through the command line.

The checkpoint is a random 32-wide TRM; what is tested is the plumbing (time, files, resume), not the score.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import SMALL_CHALLENGES, SMALL_SOLUTIONS
from trm_kaggle import cli
from trm_kaggle.checkpoint import save_checkpoint
from trm_kaggle.model import TinyRecursiveModel, TRMConfig
from trm_kaggle.pipeline import RunOptions, run_pipeline
from trm_kaggle.submission import validate_submission
from trm_kaggle.train import Trainer, TrainConfig

REPO = Path(__file__).resolve().parents[1]
FEW_TASKS = ("17cae0c1", "00576224", "2072aba6", "0692e18c")  # the smallest grids of small_challenges


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random 32-wide TRM with two ACT steps, in our checkpoint format."""
    torch.manual_seed(0)
    config = TRMConfig(hidden_size=32, num_heads=1, L_layers=1, H_cycles=1, L_cycles=1, puzzle_emb_len=1,
                       puzzle_emb_ndim=32, halt_max_steps=2, forward_dtype="float32")
    return save_checkpoint(TinyRecursiveModel(config), tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def few_tasks(tmp_path_factory) -> tuple[Path, Path]:
    """(challenges, solutions) files holding four real tasks with small grids."""
    folder = tmp_path_factory.mktemp("tasks")
    challenges = json.loads(SMALL_CHALLENGES.read_text())
    solutions = json.loads(SMALL_SOLUTIONS.read_text())
    (folder / "challenges.json").write_text(json.dumps({t: challenges[t] for t in FEW_TASKS}))
    (folder / "solutions.json").write_text(json.dumps({t: solutions[t] for t in FEW_TASKS}))
    return folder / "challenges.json", folder / "solutions.json"


def _phase(timeline: dict, name: str) -> dict:
    return next(p for p in timeline["phases"] if p["name"] == name)


# ----------------------------------------------------------------------------------------- injected clock
class ModelTimeClock:
    """Fake seconds that pass only inside the model: each ACT step costs `per_row` seconds per row.

    From the moment training starts the machine is `slowdown` times slower than it was when measured, so the
    plan is wrong and only the deadlines can keep the run on time.
    """

    def __init__(self, per_row: float = 1.0, slowdown: float = 3.0):
        self.now = 1000.0
        self.per_row = per_row
        self.slowdown = slowdown
        self.factor = 1.0

    def __call__(self) -> float:
        return self.now


def test_run_pipeline_keeps_to_its_deadlines_on_an_injected_clock_and_covers_every_task(
        tiny_checkpoint, few_tasks, tmp_path, monkeypatch):
    clock = ModelTimeClock()
    act_step, train = TinyRecursiveModel.act_step, Trainer.train

    def timed_act_step(self, z_H, z_L, inputs, ids):
        clock.now += clock.per_row * clock.factor * inputs.shape[0]
        return act_step(self, z_H, z_L, inputs, ids)

    def slower_train(self, *args, **kwargs):
        clock.factor = clock.slowdown
        return train(self, *args, **kwargs)

    monkeypatch.setattr(TinyRecursiveModel, "act_step", timed_act_step)
    monkeypatch.setattr(Trainer, "train", slower_train)
    challenges, _ = few_tasks
    out = tmp_path / "run"
    budget_s = 400.0
    opts = RunOptions(checkpoint=str(tiny_checkpoint), challenges=str(challenges), out_dir=str(out),
                      budget_s=budget_s, device="cpu", infer_batch_size=8,
                      train=TrainConfig(global_batch_size=4, num_variants=16, warmup_steps=0, seed=0))
    result = run_pipeline(opts, clock=clock)

    report = result.report
    timeline = json.loads((out / "timeline.json").read_text())
    work_deadline = timeline["deadline_s"] - timeline["reserve_s"]
    slow_step = 4 * clock.per_row * clock.slowdown  # one training step at the slowed speed (4 rows)
    # Measured on the injected clock: 4 rows x 1 s per step, 2 ACT steps x 1 s per inference row.
    assert report["throughput"]["train_step_s"] == pytest.approx(4.0)
    assert report["throughput"]["infer_variant_s"] == pytest.approx(2.0)
    # Training planned at 4 s a step ran at 12 s a step: its child deadline stopped it, not the step count.
    train_phase = _phase(timeline, "train")
    assert report["train"]["stopped_by"] == "deadline"
    assert report["train"]["steps_done"] < report["plan"]["train_steps"]
    planned_end = train_phase["start_s"] + report["plan"]["train_seconds"]
    assert planned_end - 2 * slow_step <= train_phase["end_s"] <= planned_end + slow_step
    # Inference, 3x slower than planned too, stopped in time for the final write.
    rounds = [p for p in timeline["phases"] if p["name"].startswith("round ")]
    assert rounds and report["inference"]["votes"] > 0
    jobs_done = sum(r["jobs"] for r in report["inference"]["rounds"])
    assert jobs_done < report["plan"]["infer_variants"] * len(FEW_TASKS)  # cut short by the deadline...
    assert _phase(timeline, "infer")["end_s"] <= work_deadline  # ...and in time for the final write
    assert report["elapsed_s"] <= budget_s
    # Every task and test input has an answer: the first batch of a round holds variant 0 of every task.
    assert validate_submission(out / "submission.json", challenges) == []
    submission = json.loads((out / "submission.json").read_text())
    assert sorted(submission) == sorted(FEW_TASKS)
    print(f"train: {report['train']['steps_done']} of {report['plan']['train_steps']} planned steps; "
          f"rounds {[r['variants'] for r in report['inference']['rounds']]}, {jobs_done} jobs; "
          f"infer ended at {_phase(timeline, 'infer')['end_s']:.0f} s (work deadline {work_deadline:.0f} s)")


# ------------------------------------------------------------------------------------------ kill + resume
def _run_argv(checkpoint: Path, challenges: Path, out: Path, budget: str, *extra: str) -> list[str]:
    return ["run", "--checkpoint", str(checkpoint), "--challenges", str(challenges), "--out", str(out),
            "--budget", budget, "--device", "cpu", "--global-batch", "4", "--num-variants", "2",
            "--infer-batch", "8", "--warmup-steps", "0", *extra]


def test_a_run_killed_mid_training_resumes_from_its_saved_step_and_ends_with_a_valid_submission(
        tiny_checkpoint, few_tasks, tmp_path):
    challenges, _ = few_tasks
    out = tmp_path / "run"
    # A long budget and many steps, so the kill lands in training; a state save every second.
    argv = _run_argv(tiny_checkpoint, challenges, out, "10m", "--max-steps", "400", "--save-every", "1s")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "trm_kaggle.cli", *argv], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    state = out / "state" / "train_state.json"
    try:
        deadline = time.monotonic() + 240
        while not state.is_file():
            assert proc.poll() is None, f"run ended before saving a state: {proc.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "no training state saved within 240 s"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)  # no handler, no final write: as if the machine died
    finally:
        proc.kill()
        proc.wait()
    saved_step = json.loads(state.read_text())["step"]
    assert saved_step > 0
    assert not (out / "report.json").exists()  # it really died mid-run

    # The same command again, now short: it must pick up the saved step rather than start over.
    argv = _run_argv(tiny_checkpoint, challenges, out, "10m", "--max-steps", str(saved_step + 5),
                     "--max-variants", "2", "--save-every", "1s")
    result = subprocess.run([sys.executable, "-m", "trm_kaggle.cli", *argv], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["resumed_from_step"] >= saved_step > 0
    assert report["train"]["start_step"] > saved_step  # measuring steps continued from the saved one
    assert report["train"]["final_step"] == saved_step + 5
    assert "resumed" in {e["name"] for e in json.loads((out / "timeline.json").read_text())["events"]}
    assert validate_submission(out / "submission.json", challenges) == []


# --------------------------------------------------------------------------------------------- end to end
def test_trm_kaggle_run_ends_within_its_budget_with_a_valid_submission_report_and_timeline(
        tiny_checkpoint, few_tasks, tmp_path, capsys):
    challenges, solutions = few_tasks
    out = tmp_path / "run"
    budget_s = 40.0
    started = time.monotonic()
    code = cli.main(_run_argv(tiny_checkpoint, challenges, out, f"{budget_s:g}s", "--solutions", str(solutions)))
    elapsed = time.monotonic() - started
    assert code == 0, capsys.readouterr().err[-3000:]
    print(f"run took {elapsed:.1f} s of a {budget_s:g} s budget")
    assert elapsed <= budget_s + 5
    assert validate_submission(out / "submission.json", challenges) == []
    report = json.loads((out / "report.json").read_text())
    for key in ("throughput", "plan", "train", "inference", "score"):
        assert key in report, key
    assert report["train"]["steps_done"] > 0 and report["stopped_by"] == "completed"
    timeline = json.loads((out / "timeline.json").read_text())
    names = [p["name"] for p in timeline["phases"]]
    assert "train" in names and any(n.startswith("round ") for n in names)
    assert (out / "state" / "train_state.json").is_file()
