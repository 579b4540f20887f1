"""Fault injection: whatever breaks, a valid submission.json covering every task and test input is left behind.

One test (or a few) per fault; tests/README.md has the table fault -> test -> what is asserted. Models are tiny
(hidden 32, one layer, two ACT steps) and budgets short, because the test machine has two shared cores.
"""

from __future__ import annotations

import copy
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trm_kaggle.pipeline as pipeline
import trm_kaggle.submission as submission_module
from trm_kaggle import kaggle_env
from trm_kaggle.augment import build_variant_index
from trm_kaggle.checkpoint import MANIFEST_FILE, WEIGHTS_FILE, file_sha256, save_checkpoint
from trm_kaggle.cli import main
from trm_kaggle.model import TinyRecursiveModel, TRMConfig
from trm_kaggle.pipeline import RunOptions, run_pipeline
from trm_kaggle.submission import fallback_attempts, validate_submission
from trm_kaggle.supervise import supervise
from trm_kaggle.tasks import TaskSet, load_tasks, merge_task_sets
from trm_kaggle.train import Trainer, TrainConfig

from .conftest import SMALL_CHALLENGES
from .test_tasks import any_task

REPO = Path(__file__).resolve().parent.parent
TINY = dict(hidden_size=32, num_heads=1, L_layers=1, H_cycles=1, L_cycles=1, puzzle_emb_len=1, puzzle_emb_ndim=32,
            halt_max_steps=2, forward_dtype="float32")
SMALL_RAW = json.loads(SMALL_CHALLENGES.read_text())
# Three real ARC tasks with small grids keep a CPU step well under a second.
THREE_IDS = sorted(SMALL_RAW, key=lambda t: sum(len(g) * len(g[0]) for p in SMALL_RAW[t]["train"]
                                                for g in p.values()))[:3]


# ------------------------------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(TinyRecursiveModel(TRMConfig(**TINY)), tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def three_tasks(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tasks") / "three.json"
    path.write_text(json.dumps({t: SMALL_RAW[t] for t in THREE_IDS}))
    return path


def assert_complete(submission: Path, challenges: Path | TaskSet) -> dict:
    """Valid against the challenges: every task id, one entry per test input, two valid grids each."""
    task_set = challenges if isinstance(challenges, TaskSet) else load_tasks(challenges)
    assert validate_submission(submission, task_set) == []
    written = json.loads(Path(submission).read_text())
    assert list(written) == task_set.task_ids
    for task_id in task_set.task_ids:
        assert len(written[task_id]) == task_set.num_test_inputs(task_id)
    return written


def options(checkpoint: Path, challenges: Path, out: Path, budget_s: float = 120.0, **kw) -> RunOptions:
    train = TrainConfig(global_batch_size=4, num_variants=4, warmup_steps=0, **kw.pop("train", {}))
    return RunOptions(checkpoint=str(checkpoint), challenges=str(challenges), out_dir=str(out), budget_s=budget_s,
                      train=train, device="cpu", infer_batch_size=16, **kw)


def run_args(checkpoint, challenges, out, budget="120s", *extra) -> list[str]:
    return ["run", "--checkpoint", str(checkpoint), "--challenges", str(challenges), "--out", str(out),
            "--budget", budget, "--global-batch", "4", "--num-variants", "4", "--warmup-steps", "0",
            "--infer-batch", "16", "--device", "cpu", *extra]


def last_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1] if err else ""


class Recorder:
    """Wraps build_submission to see the predictions each task got (the votes, before the fallback fills gaps)."""

    def __init__(self, real):
        self.real, self.predictions = real, {}

    def __call__(self, task_set, predictions):
        self.predictions = {t: [list(c) for c in per_input] for t, per_input in predictions.items()}
        return self.real(task_set, predictions)


class Run:
    """`python -m trm_kaggle.cli <argv>` in the background, its stderr collected, for signal and kill tests."""

    def __init__(self, argv: list[str], **env):
        self.proc = subprocess.Popen([sys.executable, "-m", "trm_kaggle.cli", *argv], cwd=REPO,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", **env})
        self.err = b""
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while chunk := os.read(self.proc.stderr.fileno(), 4096):
            self.err += chunk

    def wait_for(self, text: str, timeout: float = 120.0) -> None:
        end = time.monotonic() + timeout
        while text.encode() not in self.err:
            if self.proc.poll() is not None or time.monotonic() > end:
                self.proc.kill()
                raise AssertionError(f"never saw {text!r}; stderr:\n{self.err.decode(errors='replace')[-3000:]}")
            time.sleep(0.1)

    def wait(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self.reader.join(timeout=5)
        return code


# ---------------------------------------------------------------------------------------- 1. bad input

BAD_FILES = {"not JSON": b"this is not json", "truncated JSON": json.dumps(SMALL_RAW)[:500].encode(),
             "a top-level list": b'[{"train": [], "test": []}]'}


@pytest.mark.parametrize("command", ["run", "predict"])
@pytest.mark.parametrize("content", list(BAD_FILES.values()), ids=list(BAD_FILES))
def test_an_unreadable_challenges_file_is_one_error_line_and_exit_2(command, content, tiny_checkpoint, tmp_path,
                                                                     capsys):
    challenges = tmp_path / "challenges.json"
    challenges.write_bytes(content)
    out = tmp_path / "out"
    if command == "run":
        argv = run_args(tiny_checkpoint, challenges, out)
    else:
        argv = ["predict", "--checkpoint", str(tiny_checkpoint), "--challenges", str(challenges),
                "--augmentations", "2", "--out", str(out / "submission.json")]
    assert main(argv) == 2
    line = last_error_line(capsys)
    assert line.startswith(f"trm-kaggle {command}: error: challenges file {challenges}")
    assert not (out / "submission.json").exists()  # no task id could be read: there is nothing to key


def _grid(h, w, colour=1):
    return [[colour] * w for _ in range(h)]


def mixed_tasks() -> tuple[dict, set[str], set[str]]:
    """Good tasks (real ones, a unicode id, one with 4 test inputs) mixed with one task per kind of defect."""
    real = [SMALL_RAW[t] for t in THREE_IDS]
    good = {THREE_IDS[0]: real[0], THREE_IDS[1]: real[1], "タスク-é🙂": real[2],
            "four-tests": {"train": real[0]["train"], "test": real[0]["test"] * 4}}
    pair = real[0]["train"][0]

    def with_train_input(grid):
        return {"train": [{"input": grid, "output": pair["output"]}], "test": real[0]["test"]}

    bad = {
        "no-train": {"test": real[0]["test"]},
        "no-test": {"train": real[0]["train"]},
        "empty-train": {"train": [], "test": real[0]["test"]},
        "ragged": with_train_input([[1, 2, 3], [4, 5]]),
        "zero-by-zero": with_train_input([]),
        "empty-rows": with_train_input([[]]),
        "31x31": {"train": real[0]["train"], "test": [{"input": _grid(31, 31)}]},
        "colour-minus-1": with_train_input([[0, -1]]),
        "colour-10": with_train_input([[10, 0]]),
        "colour-2.5": with_train_input([[2.5]]),
        "string-cell": with_train_input([["3"]]),
    }
    ordered = {}
    for (gk, gv), (bk, bv) in zip(list(good.items()) * 3, bad.items()):  # interleave good and bad
        ordered.setdefault(gk, gv)
        ordered[bk] = bv
    return ordered, set(good), set(bad)


@pytest.mark.parametrize("command", ["run", "predict"])
def test_good_tasks_get_votes_and_each_malformed_task_a_fallback_and_one_log_line(
        command, tiny_checkpoint, tmp_path, monkeypatch, caplog):
    raw, good, bad = mixed_tasks()
    challenges = tmp_path / "mixed.json"
    challenges.write_text(json.dumps(raw, ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "out"
    if command == "run":
        recorder = Recorder(pipeline.build_submission)
        monkeypatch.setattr(pipeline, "build_submission", recorder)
        argv = run_args(tiny_checkpoint, challenges, out, "120s", "--max-steps", "3")
    else:
        recorder = Recorder(submission_module.build_submission)
        monkeypatch.setattr(submission_module, "build_submission", recorder)
        out.mkdir()  # predict writes a file, not a folder
        argv = ["predict", "--checkpoint", str(tiny_checkpoint), "--challenges", str(challenges),
                "--augmentations", "2", "--out", str(out / "submission.json")]
    caplog.set_level("WARNING", logger="trm_kaggle.tasks")
    assert main(argv) == 0
    warned = [r.getMessage() for r in caplog.records if r.name == "trm_kaggle.tasks" and r.levelname == "WARNING"]

    written = assert_complete(out / "submission.json", challenges)
    assert set(recorder.predictions) == good  # malformed tasks never reach the model
    for task_id in good:
        assert len(recorder.predictions[task_id]) == len(raw[task_id]["test"])
        assert all(candidates for candidates in recorder.predictions[task_id])  # every test input got votes
    assert len(written["four-tests"]) == 4
    for task_id in bad:
        assert sum(f"task {task_id!r}" in m for m in warned) == 1, task_id
    assert len(warned) == len(bad)
    for message in warned:
        assert "\n" not in message


def test_a_thousand_tasks_get_a_complete_fallback_through_run_without_a_model(tmp_path, capsys):
    real = [SMALL_RAW[t] for t in sorted(SMALL_RAW)]
    raw = {f"{i:08x}": real[i % len(real)] for i in range(1000)}
    for i in range(0, 1000, 97):  # a few malformed ones too
        raw[f"{i:08x}"] = {"train": [], "test": [{"input": [[1, 2], [3]]}]}
    challenges = tmp_path / "thousand.json"
    challenges.write_text(json.dumps(raw))
    out = tmp_path / "out"
    started = time.monotonic()
    # A missing checkpoint stops the run right after the fallback, so only the loader and the writer run.
    assert main(run_args(tmp_path / "no-checkpoint", challenges, out)) == 2
    assert "does not exist" in last_error_line(capsys)
    assert_complete(out / "submission.json", challenges)
    assert time.monotonic() - started < 60


def test_tasks_repeated_across_files_are_answered_once_in_a_complete_fallback(tmp_path, caplog):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    ids = sorted(SMALL_RAW)
    first.write_text(json.dumps({t: SMALL_RAW[t] for t in ids[:6]}))
    second.write_text(json.dumps({t: SMALL_RAW[t] for t in ids[4:9]}))  # ids[4:6] in both
    merged = merge_task_sets(load_tasks(first), load_tasks(second))
    assert merged.task_ids == ids[:9]
    out = tmp_path / "submission.json"
    submission_module.write_submission(fallback_attempts(merged), out)
    assert_complete(out, merged)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tasks=st.dictionaries(st.text(max_size=5), any_task, max_size=5))
def test_any_challenges_object_gets_a_fallback_that_validates(tasks, tmp_path_factory):
    """The loader fuzz of test_tasks.py, carried one step further: whatever loads, its fallback is complete."""
    path = tmp_path_factory.mktemp("fuzz") / "c.json"
    path.write_text(json.dumps(tasks))
    task_set = load_tasks(path)
    fallback = fallback_attempts(task_set)
    assert validate_submission(fallback, path) == []
    assert list(fallback) == list(tasks)


# ------------------------------------------------------------------------------------- 2. a rank dies


def test_a_rank_killed_mid_training_still_ends_with_a_valid_submission(tiny_checkpoint, three_tasks, tmp_path):
    """Two gloo ranks on CPU; rank 1 is SIGKILLed at its first training step. The supervisor stops rank 0,
    re-runs the job as one process until the same deadline, and checks the file."""
    out = tmp_path / "out"
    run = Run(run_args(tiny_checkpoint, three_tasks, out, "150s", "--nproc", "2", "--max-steps", "12"))
    run.wait_for("supervising 2 ranks")
    run.wait_for("train step")  # rank 0's progress line: both ranks are past the plan, inside training
    record = json.loads((out / "supervisor.json").read_text())
    os.kill(record["ranks"][1]["pid"], signal.SIGKILL)
    assert run.wait(timeout=180) == 0  # the recovery run completed
    record = json.loads((out / "supervisor.json").read_text())
    assert record["failed"]["rank"] == 1 and "SIGKILL" in record["failed"]["reason"]
    assert record["recovery"]["exit_code"] == 0
    assert record["final_check"].startswith("valid")
    assert_complete(out / "submission.json", three_tasks)
    report = json.loads((out / "report.json").read_text())  # the recovery's report
    assert report["world_size"] == 1 and report["inference"]["votes"] > 0


FAKE_PYTHON = """#!{python}
import os, signal, sys, time
out = sys.argv[sys.argv.index("--out") + 1]
rank = os.environ.get("RANK")
if rank == "1":
    sys.exit(3)                                   # dies at once
if rank == "0":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # stuck in a collective: only SIGKILL ends it
    time.sleep(600)
open(os.path.join(out, "recovery-ran"), "w").write(" ".join(sys.argv))  # the single-process recovery
"""


def test_the_supervisor_kills_a_hung_survivor_runs_the_recovery_and_repairs_the_file(three_tasks, tmp_path):
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE_PYTHON.format(python=sys.executable))
    fake.chmod(0o755)
    out = tmp_path / "out"
    (out).mkdir()
    (out / "submission.json").write_text('{"truncated": [')
    started = time.time()
    code = supervise(["run", "--out", str(out), "--nproc", "2"], 2, started + 30, out, three_tasks,
                     python=str(fake), grace_s=1.0, min_recovery_s=5.0)
    assert code == 0
    assert time.time() - started < 15  # the failure is acted on at once, not at the deadline
    record = json.loads((out / "supervisor.json").read_text())
    assert record["failed"] == {"rank": 1, "exit_code": 3, "reason": "exit code 3"}
    assert [r["exit_code"] for r in record["ranks"]] == [128 + signal.SIGKILL, 3]
    assert record["recovery"]["exit_code"] == 0
    assert "--nproc 1" in (out / "recovery-ran").read_text()
    assert record["final_check"].startswith("REPAIRED")
    assert_complete(out / "submission.json", three_tasks)


# ------------------------------------------------------------------------------------------ 3. NaN loss


def poison_act_loss(monkeypatch, bad_calls):
    """act_loss returns a NaN loss on the calls numbered in bad_calls (one call per step at this batch)."""
    import trm_kaggle.train as train_module

    real, calls = train_module.act_loss, [0]

    def act_loss(*args, **kwargs):
        calls[0] += 1
        loss, correct, metrics = real(*args, **kwargs)
        return (loss * float("nan") if calls[0] in bad_calls else loss), correct, metrics

    monkeypatch.setattr(train_module, "act_loss", act_loss)


def nan_events(out: Path) -> list[dict]:
    return [e for e in json.loads((out / "timeline.json").read_text())["events"] if e["name"] == "nan_rollback"]


def test_a_nan_loss_rolls_back_halves_the_lr_and_training_goes_on(tiny_checkpoint, three_tasks, tmp_path,
                                                                  monkeypatch, caplog):
    poison_act_loss(monkeypatch, bad_calls={4, 5})  # the first two steps after the three measured ones
    out = tmp_path / "out"
    # A snapshot every 2 steps: the one taken before step 3 is the last good one when step 4 fails.
    result = run_pipeline(options(tiny_checkpoint, three_tasks, out, max_steps=5, train={"snapshot_every": 2}))
    train = result.report["train"]
    assert train["nan_events"] == 2 and train["stopped_by"] == "steps" and train["final_step"] == 5
    assert len(nan_events(out)) == 2
    assert "at step 4: rolled back to step 2, LR scale now 0.5" in caplog.text
    assert "at step 3: rolled back to step 2, LR scale now 0.25" in caplog.text
    assert result.report["train_history"][-1]["lr_factor"] == pytest.approx(0.25)  # warm-up 0: base factor 1
    assert result.report["inference"]["votes"] > 0
    assert_complete(out / "submission.json", three_tasks)


def test_repeated_nans_stop_training_and_go_straight_to_inference(tiny_checkpoint, three_tasks, tmp_path,
                                                                  monkeypatch):
    poison_act_loss(monkeypatch, bad_calls=set(range(4, 10_000)))  # every step after the 3 measured ones
    out = tmp_path / "out"
    result = run_pipeline(options(tiny_checkpoint, three_tasks, out, budget_s=120.0))
    train = result.report["train"]
    assert train["stopped_by"] == "nan" and train["nan_events"] == 3
    assert len(nan_events(out)) == 3
    assert train["seconds"] < result.report["plan"]["train_seconds"] / 2  # did not train on to its deadline
    assert result.report["inference"]["votes"] > 0  # the last good weights still vote
    assert_complete(out / "submission.json", three_tasks)


# --------------------------------------------------------------------------------------- 4. out of memory


def oom_on_first_full_batch(model: TinyRecursiveModel, full_rows: int) -> list[int]:
    """The model's forward raises CUDA's OOM error the first time it sees the full micro-batch."""
    real, raised = model.forward, []

    def forward(carry, batch, *args, **kwargs):
        if not raised and carry.z_H.shape[0] == full_rows:
            raised.append(full_rows)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(carry, batch, *args, **kwargs)

    model.forward = forward
    return raised


def test_out_of_memory_halves_the_micro_batch_and_the_update_equals_the_unsplit_one(three_tasks):
    task_set = load_tasks(three_tasks)
    tasks = [task_set.tasks[t] for t in task_set.task_ids]
    index = build_variant_index(tasks, n=4)
    torch.manual_seed(0)
    model = TinyRecursiveModel(TRMConfig(**TINY))
    model.resize_puzzle_table(index.num_identifiers)
    twin = copy.deepcopy(model)
    config = TrainConfig(global_batch_size=4, num_variants=4, warmup_steps=0)
    plain, split = Trainer(model, tasks, config, index), Trainer(twin, tasks, config, index)
    raised = oom_on_first_full_batch(twin, full_rows=4)
    for _ in range(2):
        a, b = plain.train_step(), split.train_step()
        assert a.loss == pytest.approx(b.loss, rel=1e-5)
    assert raised == [4] and split.micro_batch == 2 and split.oom_events == 1
    assert plain.micro_batch == 4 and split.local_batch == 4  # the global batch is kept
    for (name, p), q in zip(model.state_dict().items(), twin.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_out_of_memory_in_a_run_is_logged_and_training_continues(tiny_checkpoint, three_tasks, tmp_path,
                                                                 monkeypatch, caplog):
    real_init = Trainer.__init__

    def init(self, model, *args, **kwargs):
        real_init(self, model, *args, **kwargs)
        oom_on_first_full_batch(model, full_rows=self.local_batch)

    monkeypatch.setattr(Trainer, "__init__", init)
    out = tmp_path / "out"
    result = run_pipeline(options(tiny_checkpoint, three_tasks, out, max_steps=6))
    assert result.report["train"]["oom_events"] == 1 and result.report["train"]["final_step"] == 6
    assert "micro-batch halved to 2 (global batch 4 kept" in caplog.text
    assert result.report["inference"]["votes"] > 0
    assert_complete(out / "submission.json", three_tasks)


# ----------------------------------------------------------------------------------- 5. bad checkpoints


def _break_checkpoint(how: str, good: Path, folder: Path) -> Path:
    if how == "missing folder":
        return folder / "absent"
    ckpt = folder / "ckpt"
    ckpt.mkdir()
    for name in (WEIGHTS_FILE, MANIFEST_FILE):
        (ckpt / name).write_bytes((good / name).read_bytes())
    weights, manifest_path = ckpt / WEIGHTS_FILE, ckpt / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    if how == "truncated weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif how == "corrupt weights, manifest rehashed":
        weights.write_bytes(b"\x00garbage" * 100)
        manifest["weights_sha256"] = file_sha256(weights)
    elif how == "weights of another model":
        torch.manual_seed(1)
        other = save_checkpoint(TinyRecursiveModel(TRMConfig(**TINY)), folder / "other")
        weights.write_bytes((other / WEIGHTS_FILE).read_bytes())
    elif how == "config not matching the tensors":
        manifest["config"]["hidden_size"] = 64  # the task embedding still fits; the trunk's tensors do not
    elif how == "manifest not JSON":
        manifest_path.write_text("{")
        return ckpt
    manifest_path.write_text(json.dumps(manifest))
    return ckpt


CHECKPOINT_FAULTS = {"missing folder": "does not exist", "truncated weights": "does not match the manifest",
                     "corrupt weights, manifest rehashed": "cannot be read as safetensors",
                     "weights of another model": "does not match the manifest",
                     "config not matching the tensors": "do not match the config",
                     "manifest not JSON": "not valid JSON"}


@pytest.mark.parametrize("how", list(CHECKPOINT_FAULTS))
def test_a_bad_checkpoint_is_one_error_line_a_nonzero_exit_and_the_fallback(how, tiny_checkpoint, three_tasks,
                                                                            tmp_path, capsys):
    ckpt = _break_checkpoint(how, tiny_checkpoint, tmp_path)
    out = tmp_path / "out"
    assert main(run_args(ckpt, three_tasks, out)) == 2
    line = last_error_line(capsys)
    assert line.startswith("trm-kaggle run: error: ") and CHECKPOINT_FAULTS[how] in line
    written = assert_complete(out / "submission.json", three_tasks)
    assert written == json.loads(json.dumps(fallback_attempts(load_tasks(three_tasks))))
    assert (out / "report.json").is_file()


# -------------------------------------------------------------------------------------- 6. deadline risk


class RunClock:
    """Wall time plus injected delay: a step or batch can take 10x longer on the run's clock at no real cost."""

    def __init__(self) -> None:
        self.delay = 0.0

    def __call__(self) -> float:
        return time.time() + self.delay


def record_write_times(monkeypatch, clock) -> list[float]:
    times, real = [], pipeline.write_submission

    def write(obj, path):
        result = real(obj, path)
        times.append(clock())
        return result

    monkeypatch.setattr(pipeline, "write_submission", write)
    return times


def test_training_steps_ten_times_slower_than_measured_still_vote_before_the_deadline(
        tiny_checkpoint, three_tasks, tmp_path, monkeypatch):
    clock, real_step, measured = RunClock(), Trainer._forward_backward, []

    def slow_step(self, *args, **kwargs):
        started = time.perf_counter()
        result = real_step(self, *args, **kwargs)
        took = time.perf_counter() - started
        if len(measured) < 3:  # the three steps the planner measures run at their real speed
            measured.append(took)
        else:  # later ones take 10x the slowest of them on the run's clock
            clock.delay += max(0.0, 10 * max(measured) - took)
        return result

    monkeypatch.setattr(Trainer, "_forward_backward", slow_step)
    writes = record_write_times(monkeypatch, clock)
    out, budget_s = tmp_path / "out", 60.0
    deadline = clock() + budget_s
    result = run_pipeline(options(tiny_checkpoint, three_tasks, out, budget_s=budget_s), clock=clock)
    assert result.report["train"]["stopped_by"] == "deadline"
    assert result.report["train"]["steps_done"] < result.report["plan"]["train_steps"]
    assert max(writes) <= deadline and result.report["elapsed_s"] <= budget_s
    rounds = result.report["inference"]["rounds"]  # training left voting its time: every job of round 1 ran
    assert rounds and rounds[0]["jobs"] == 3 * (rounds[0]["variants"][1] - rounds[0]["variants"][0])
    assert_complete(out / "submission.json", three_tasks)


def test_inference_slower_than_measured_stops_in_time_with_a_complete_file(
        tiny_checkpoint, three_tasks, tmp_path, monkeypatch):
    clock, real_predict, batches = RunClock(), TinyRecursiveModel.predict, []

    def predict(self, *args, **kwargs):
        result = real_predict(self, *args, **kwargs)
        if not self.training:  # voting; the measurement runs on the model in training mode
            batches.append(1)
            clock.delay += 15.0  # each batch of one job takes 15 s on the run's clock
        return result

    monkeypatch.setattr(TinyRecursiveModel, "predict", predict)
    writes = record_write_times(monkeypatch, clock)
    out, budget_s = tmp_path / "out", 120.0
    deadline = clock() + budget_s
    # No training after the measurement: voting has about 100 s, not enough for 12 batches of 15 s.
    opts = options(tiny_checkpoint, three_tasks, out, budget_s=budget_s, max_steps=3)
    opts.infer_batch_size = 1
    result = run_pipeline(opts, clock=clock)
    assert 0 < len(batches) < 12
    assert max(writes) <= deadline and result.report["elapsed_s"] <= budget_s
    assert_complete(out / "submission.json", three_tasks)


# ------------------------------------------------------------------------------------ 7. SIGTERM, SIGINT


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_training_writes_the_best_file_saves_state_and_exits(sig, tiny_checkpoint, three_tasks,
                                                                            tmp_path):
    out = tmp_path / "out"
    run = Run(run_args(tiny_checkpoint, three_tasks, out, "5m"))
    run.wait_for("train step")
    sent = time.monotonic()
    run.proc.send_signal(sig)
    assert run.wait(timeout=30) == 128 + sig
    assert time.monotonic() - sent < 15
    assert_complete(out / "submission.json", three_tasks)
    state = json.loads((out / "state" / "train_state.json").read_text())
    assert state["step"] >= 3
    report = json.loads((out / "report.json").read_text())
    assert report["stopped_by"] == sig.name
    assert not list(out.glob(".*tmp*"))


@pytest.fixture(scope="module")
def finished_run(tiny_checkpoint, three_tasks, tmp_path_factory) -> Path:
    """The output folder of a short completed run: votes in submission.json, state/ at step 4."""
    out = tmp_path_factory.mktemp("finished") / "out"
    run_pipeline(options(tiny_checkpoint, three_tasks, out, max_steps=4))
    return out


def test_a_second_run_resumes_and_keeps_the_earlier_submission_until_its_first_round(
        tiny_checkpoint, three_tasks, finished_run, tmp_path, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(finished_run, out)
    earlier = (out / "submission.json").read_bytes()
    seen = []
    real_write = pipeline.write_submission
    monkeypatch.setattr(pipeline, "write_submission",
                        lambda obj, path: (seen.append(Path(path).read_bytes()), real_write(obj, path))[1])
    result = run_pipeline(options(tiny_checkpoint, three_tasks, out, max_steps=6))
    assert result.report["resumed_from_step"] == 4 and result.report["first_submission"] == "kept"
    assert seen[0] == earlier  # the first write of the second run replaced the earlier votes, not the fallback


def test_a_torn_training_state_is_ignored_and_training_starts_from_the_checkpoint(
        tiny_checkpoint, three_tasks, finished_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished_run, out)
    tensors = out / "state" / "train_state.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:100])
    result = run_pipeline(options(tiny_checkpoint, three_tasks, out, max_steps=4))
    assert "torn write" in result.report["resume_failed"]
    assert result.report["train"]["final_step"] == 4 and result.report["inference"]["votes"] > 0
    assert_complete(out / "submission.json", three_tasks)


# ---------------------------------------------------------------------------------------- 8. disk full


class _DiskFullOs:
    """The os module as submission.py sees it, with writes failing on a full disk once armed."""

    def __init__(self):
        self.armed = False

    def __getattr__(self, name):
        return getattr(os, name)

    def fdopen(self, fd, *args, **kwargs):
        handle = os.fdopen(fd, *args, **kwargs)
        if not self.armed:
            return handle
        real_write = handle.write

        def write(text):
            real_write(text[: len(text) // 2])  # part of it lands, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")

        handle.write = write
        return handle


def test_a_full_disk_keeps_the_previous_submission_byte_for_byte_and_no_temp_file(
        tiny_checkpoint, three_tasks, tmp_path, monkeypatch, caplog):
    fake_os = _DiskFullOs()
    monkeypatch.setattr(submission_module, "os", fake_os)
    real_write, first = pipeline.write_submission, []

    def write_then_fill_the_disk(obj, path):
        result = real_write(obj, path)
        first.append(Path(path).read_bytes())
        fake_os.armed = True  # every write after the fallback fails
        return result

    monkeypatch.setattr(pipeline, "write_submission", write_then_fill_the_disk)
    out = tmp_path / "out"
    result = run_pipeline(options(tiny_checkpoint, three_tasks, out, max_steps=4))
    assert result.report["inference"]["votes"] > 0  # the run went on after the failed round write
    assert "No space left on device" in caplog.text
    assert (out / "submission.json").read_bytes() == first[0]
    assert sorted(p.name for p in out.iterdir() if "tmp" in p.name) == []
    assert_complete(out / "submission.json", three_tasks)


# ------------------------------------------------------------------------------------- 9. notebook level


def test_a_run_that_exits_nonzero_with_a_truncated_file_is_repaired_by_the_notebook(three_tasks, tmp_path, capsys):
    out = tmp_path / "submission.json"
    dies = f"open({str(out)!r}, 'w').write('{{\"{THREE_IDS[0]}\": [{{\"attempt_1\": [[1'); raise SystemExit(1)"
    assert kaggle_env.stream([sys.executable, "-c", dies]) == 1
    status = kaggle_env.ensure_valid_submission(out, three_tasks)
    assert status.startswith("REPAIRED")
    assert_complete(out, three_tasks)


def test_a_run_killed_mid_training_leaves_a_file_the_notebook_accepts_or_repairs(tiny_checkpoint, three_tasks,
                                                                                 tmp_path):
    out = tmp_path / "out"
    run = Run(run_args(tiny_checkpoint, three_tasks, out, "5m"))
    run.wait_for("train step")
    run.proc.kill()
    assert run.wait(timeout=30) == -signal.SIGKILL
    assert kaggle_env.ensure_valid_submission(out / "submission.json", three_tasks).startswith("valid")
    # Killed a moment later, a rename might not have happened yet; a half-written file is repaired.
    (out / "submission.json").write_bytes((out / "submission.json").read_bytes()[:40])
    assert kaggle_env.ensure_valid_submission(out / "submission.json", three_tasks).startswith("REPAIRED")
    assert_complete(out / "submission.json", three_tasks)
