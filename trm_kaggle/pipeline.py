"""The whole Kaggle job under one deadline: fallback, post-train, vote in rounds, submit.

    trm-kaggle run --checkpoint checkpoints/trm-cpu-small --challenges arc-agi_test_challenges.json --budget 12h --out out/
    torchrun --standalone --nproc-per-node 4 -m trm_kaggle.cli run ...      # 4 GPUs, one process each
    trm-kaggle run --nproc 4 ...              # the same, under a supervisor that survives a dead rank (supervise.py)

Order of events, and why:
 1. tasks are loaded and a fallback submission.json is written before anything that can fail or take time
    (a valid submission already there, from an earlier run on the same folder, is kept instead);
 2. the checkpoint is loaded; every variant of every task gets a task-embedding row at the checkpoint's mean;
 3. the first training steps and one inference batch are timed on the real model and hardware, and the planner
    fixes the inference variant count (512, else 256, else what fits) and gives training the rest;
 4. training runs until its own deadline or step count, saving its state every few minutes (and on SIGTERM),
    so a second `run` on the same folder resumes instead of starting over;
 5. inference runs in rounds over all tasks (a few variants each, then more); after every round the best
    submission so far is written atomically, so stopping at any moment leaves votes for every task;
 6. report.json, timeline.json and timeline.png say where the time went, planned vs actual.

What goes wrong, and what happens then (tests/test_faults.py): a step or a batch slower than measured ends its
phase early, judged on the last one's real duration; a NaN rolls back and halves the LR, repeated NaNs go
straight to voting; an out-of-memory step halves the micro-batch; a failing write leaves the last file in place
and the next round tries again; a torn saved state means training restarts from the checkpoint; SIGTERM/SIGINT
end the current step or batch, save the state and leave the best file (exit 128 + signal); the decisions to
stop are taken by all ranks together, so no rank is left waiting in a collective.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from . import __version__
from .augment import build_variant_index
from .budget import Budget, PlanOptions, Throughput, Timeline, inference_rounds, plan, projected_steps
from .checkpoint import load_checkpoint
from .distributed import DistInfo, all_gather_objects, any_rank, barrier, broadcast_object, init_distributed
from .errors import ConfigError
from .rescore import check_selection
from .submission import (build_submission, fallback_attempts, score_submission, validate_submission,
                         write_submission)
from .tasks import TaskSet, load_tasks
from .train import StepStats, Trainer, TrainConfig
from .vote import VoteBook, build_jobs, run_votes

log = logging.getLogger("trm_kaggle.pipeline")

# The public placeholder has about a third fewer test inputs than the hidden rerun (TRM_FACTS §8.6).
RERUN_TEST_INPUT_FACTOR = 1.5


@dataclass
class RunOptions:
    checkpoint: str
    challenges: str
    out_dir: str
    budget_s: float
    solutions: str | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    max_steps: int | None = None  # None: as many as the plan allows
    max_variants: int | None = None  # cap on inference variants per test input; None: the planner's 512/256/fit
    preferred_variants: tuple[int, ...] = (512, 256)
    infer_batch_size: int = 64
    act_steps: int | None = None  # None: the checkpoint's halt_max_steps, as upstream eval
    device: str = "auto"
    measure_steps: int = 3
    safety_factor: float = 1.5
    first_round: int = 8
    resume: bool = True
    selection: str = "vote"  # vote: (votes, mean q); rescore: the top K re-ranked by likelihood (rescore.py)
    rescore_top_k: int = 8
    rescore_augmentations: int = 8
    deadline: float | None = None  # absolute time on the run's clock; wins over budget_s (ranks share one)


@dataclass
class RunResult:
    submission: Path
    report: dict[str, Any]
    exit_code: int = 0


class _StopFlag:
    """Set by SIGTERM/SIGINT: every loop checks it, then the best submission is written and state saved."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.signum = 0

    def __call__(self) -> bool:
        return self.reason is not None

    def install(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

        def handler(signum, _frame):
            self.reason = signal.Signals(signum).name
            self.signum = signum
            log.warning("%s received: finishing the current batch, then writing the submission", self.reason)

        for s in previous:
            signal.signal(s, handler)
        return lambda: [signal.signal(s, h) for s, h in previous.items()]


def _valid_tasks(task_set: TaskSet):
    return [task_set.tasks[t] for t in task_set.task_ids if t in task_set.tasks]


def run_pipeline(opts: RunOptions, clock: Callable[[], float] = time.time, dist: DistInfo | None = None,
                 on_step: Callable[[StepStats], None] | None = None,
                 progress: Callable[[int, int], None] | None = None) -> RunResult:
    """Run the whole job; always leaves a valid submission.json in opts.out_dir (on rank 0)."""
    dist = dist or init_distributed(None if opts.device == "auto" else opts.device)
    out = Path(opts.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    submission_path = out / "submission.json"
    check_selection(opts.selection)

    if opts.deadline is not None:
        now = clock()
        budget = Budget(max(float(opts.deadline), now), clock=clock, start=now)
    else:
        budget = Budget.from_duration(opts.budget_s, clock=clock)
    budget = Budget.from_dict(broadcast_object(budget.to_dict(), dist), clock=clock)
    timeline = Timeline(budget)
    stop = _StopFlag()
    restore_signals = stop.install()
    task_set: TaskSet | None = None
    book: VoteBook | None = None
    predictions: dict[str, Any] | None = None  # set when rescoring reorders the votes
    report: dict[str, Any] = {"trm_kaggle_version": __version__, "checkpoint": str(opts.checkpoint),
                              "challenges": str(opts.challenges), "budget_s": opts.budget_s,
                              "world_size": dist.world_size, "device": str(dist.device)}
    try:
        with timeline.phase("setup") as ph:
            task_set = load_tasks(opts.challenges)
            if dist.is_main:
                report["first_submission"] = _write_first_submission(task_set, submission_path)
            tasks = _valid_tasks(task_set)
            report["tasks"] = {"total": len(task_set.task_ids), "valid": len(tasks),
                               "invalid": {t: f"{v.field}: {v.reason}" for t, v in task_set.invalid.items()},
                               "test_inputs": sum(task_set.num_test_inputs(t) for t in task_set.task_ids)}
            ph.info.update(tasks=len(tasks))
            variant_index = build_variant_index(tasks, n=opts.train.num_variants, seed=opts.train.seed)
            model = _load_model(opts, variant_index)
            report["checkpoint_config"] = model.config.to_dict()
            report["checkpoint_provenance"] = model.checkpoint_manifest.get("provenance", {})
            ph.info.update(variant_rows=variant_index.num_identifiers)
        book = VoteBook()
        if not tasks:
            log.warning("no valid task: the fallback submission stands")
            report["stopped_by"] = "no valid task"
            return RunResult(submission_path, report)
        trainer = Trainer(model, tasks, opts.train, variant_index, dist=dist)
        state_dir = out / "state"
        if opts.resume and (state_dir / "train_state.json").is_file():
            try:
                meta = trainer.load_state(state_dir)
            except Exception as exc:  # noqa: BLE001 - a torn or foreign state costs the training, not the run
                log.warning("cannot resume from %s (%s); post-training starts again from the checkpoint",
                            state_dir, " ".join(str(exc).split()))
                timeline.event("resume_failed", error=repr(exc))
                report["resume_failed"] = " ".join(str(exc).split())
                # The failed load may have replaced some weights already: start from a clean copy.
                model = _load_model(opts, variant_index)
                trainer = Trainer(model, tasks, opts.train, variant_index, dist=dist)
            else:
                timeline.event("resumed", step=meta["step"])
                log.warning("resumed from %s at step %d", state_dir, meta["step"])
                report["resumed_from_step"] = meta["step"]

        def save_state() -> None:
            trainer.save_state(state_dir)
            timeline.event("state_saved", step=trainer.step)

        n_inputs = sum(len(t.test) for t in tasks)
        act_steps = opts.act_steps or model.config.halt_max_steps
        train_plan, throughput = _measure_and_plan(opts, trainer, task_set, variant_index, budget, timeline,
                                                   n_inputs, act_steps, dist, stop)
        report["throughput"] = throughput.to_dict()
        report["train_batch"] = opts.train.global_batch_size
        report["plan"] = train_plan.to_dict()
        report["projection_12h"] = _projection(throughput, train_plan, n_inputs, dist)

        # ------------------------------------------------------------------------------------ training
        train_budget = budget.child("train", max(0.0, train_plan.train_seconds))
        target = trainer.step + train_plan.train_steps
        if opts.max_steps is not None:
            target = min(target, opts.max_steps)
        trainer.set_total_steps(max(target, 1))
        # A step that would end past the training deadline is not started: at the speed seen on the last step
        # (not the measured one) the phase ends on time even when steps get 10x slower than planned. Seen on
        # the budget's clock, which is the one the deadline is on.
        last_step_s = [throughput.train_step_s if throughput.train_step_s < 1e9 else 0.0]
        step_ended = [budget.clock()]

        def observe_step(stats: StepStats) -> None:
            now = budget.clock()
            last_step_s[0], step_ended[0] = now - step_ended[0], now
            if on_step is not None:
                on_step(stats)

        def train_should_stop() -> bool:
            return stop() or train_budget.remaining() <= last_step_s[0]

        with timeline.phase("train", planned_s=train_plan.train_seconds, target_step=target) as ph:
            try:
                summary = trainer.train(max_steps=target, should_stop=train_should_stop,
                                        on_step=observe_step, save_state=save_state)
            except Exception as exc:  # noqa: BLE001 - a broken training step must not cost the submission
                log.exception("training failed at step %d; voting with the weights we have", trainer.step)
                timeline.event("train_failed", step=trainer.step, error=repr(exc))
                summary = None
            ph.info.update(steps=trainer.step, stopped_by=summary.stopped_by if summary else "error")
        if summary is not None:
            for _ in range(summary.nan_events):
                timeline.event("nan_rollback")
            report["train"] = {k: v for k, v in summary.to_dict().items() if k != "history"}
            report["train"]["final_step"] = trainer.step
            report["train_history"] = summary.history[-200:]
            if dist.is_main:
                _write_learning_curve(summary.history, out / "learning_curve.png", report)
        try:
            save_state()
        except Exception:  # noqa: BLE001 - a full disk costs the resume point, not the inference
            log.exception("could not save the training state; voting anyway")

        # ----------------------------------------------------------------------------------- inference
        # Rescoring runs after the votes are pooled: voting ends early enough to leave it its time.
        rescore_s = _rescore_reserve_s(opts, throughput, n_inputs)
        vote_budget = budget.child("vote", max(0.0, budget.work_remaining() - rescore_s)) if rescore_s else budget
        report["inference"] = _vote_in_rounds(opts, trainer, task_set, variant_index, train_plan.infer_variants,
                                              throughput, vote_budget, timeline, book, submission_path, act_steps,
                                              dist, stop, progress)
        if opts.selection == "rescore" and dist.is_main:
            predictions, report["rescore"] = _rescore_votes(opts, trainer, task_set, variant_index, book, budget,
                                                            timeline, submission_path, act_steps, stop)
        report["stopped_by"] = stop.reason or "completed"
    finally:
        if dist.is_main:
            _finish(opts, report, timeline, out, submission_path, task_set, book, predictions)
        restore_signals()  # after the last write, so a second Ctrl-C cannot interrupt it
    # Stopped by a signal: the shell's convention (130 for SIGINT, 143 for SIGTERM), the files are complete.
    return RunResult(submission_path, report, exit_code=128 + stop.signum if stop.reason else 0)


def _load_model(opts: RunOptions, variant_index):
    """The checkpoint with one task-embedding row per variant, each at the checkpoint's mean (seeded)."""
    model = load_checkpoint(opts.checkpoint, map_location="cpu")
    torch.manual_seed(opts.train.seed)
    model.resize_puzzle_table(variant_index.num_identifiers, init=opts.train.embedding_init,
                              mean=model.checkpoint_mean)
    return model


def _write_first_submission(task_set: TaskSet, path: Path) -> str:
    """The fallback, unless `path` already holds a valid submission for these very tasks.

    A second run on the same folder (a resume, or the single-process recovery after a rank died) finds the
    votes of the earlier run there; they are better than the fallback and stay until this run's first round.
    """
    if path.is_file():
        try:
            problems = validate_submission(path, task_set)
        except Exception:  # noqa: BLE001 - unreadable: replaced below like any invalid file
            problems = ["unreadable"]
        if not problems:
            log.warning("%s already holds a valid submission for these tasks: kept until the first round", path)
            return "kept"
    write_submission(fallback_attempts(task_set), path)
    return "fallback"


def _measure_and_plan(opts, trainer: Trainer, task_set, variant_index, budget: Budget, timeline: Timeline,
                      n_inputs: int, act_steps: int, dist: DistInfo, stop):
    """Time real training steps and one real inference batch, then split the time that is left."""
    with timeline.phase("measure") as ph:
        trainer.set_total_steps(10**6)  # provisional; fixed once the plan is known
        step_times = []
        # Measuring is itself bounded: at most a tenth of the budget, whatever a busy machine makes a step cost.
        measure_until = budget.clock() + 0.1 * budget.work_remaining()
        for _ in range(opts.measure_steps):
            over = bool(step_times) and budget.clock() >= measure_until
            # Collective: a signal reaches ranks at slightly different moments, and train_step all-reduces.
            if any_rank(stop() or budget.work_remaining() <= 0 or over, dist):
                break
            t0 = budget.clock()  # the clock the plan divides: a fake one in tests, wall time on Kaggle
            trainer.train_step()
            step_times.append(budget.clock() - t0)
        # The first step pays for allocation and warm-up: prefer the later ones.
        timed = step_times[1:] or step_times or [float("inf")]
        train_step_s = sorted(timed)[len(timed) // 2]
        # A full inference batch: per-row cost depends on the batch size, on a GPU most of all.
        jobs = build_jobs(task_set, variant_index, (0, 1))[: opts.infer_batch_size]
        infer_variant_s = _time_inference(trainer, jobs, task_set, act_steps, budget.clock)
        ph.info.update(train_step_s=train_step_s, infer_variant_s=infer_variant_s, steps=len(step_times))
    throughput = Throughput(train_step_s=train_step_s if math.isfinite(train_step_s) else 1e9,
                            infer_variant_s=infer_variant_s, train_samples=len(step_times),
                            infer_samples=len(jobs))
    throughput = Throughput.from_dict(broadcast_object(throughput.to_dict(), dist))
    # Ranks share inference evenly, so one rank sees 1/world of the test inputs.
    per_rank_inputs = math.ceil(n_inputs / dist.world_size)
    max_variants = max(len(v) for v in variant_index.variants.values())
    if opts.max_variants is not None:
        max_variants = min(max_variants, opts.max_variants)
    # Time kept after voting for rescoring is planned like the final write: training and voting leave it free.
    reserve_s = budget.final_write_reserve_s + _rescore_reserve_s(opts, throughput, n_inputs)
    options = PlanOptions(reserve_s=reserve_s, safety_factor=opts.safety_factor,
                          preferred_variants=tuple(opts.preferred_variants), max_variants=max_variants)
    chosen = plan(budget.remaining(), throughput, per_rank_inputs, options)
    timeline.event("plan", **chosen.to_dict())
    log.warning("plan: %s; %d training steps in %.0f s, %d variants", chosen.reason, chosen.train_steps,
                chosen.train_seconds, chosen.infer_variants)
    return chosen, throughput


@torch.no_grad()
def _time_inference(trainer: Trainer, jobs, task_set, act_steps: int,
                    clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds per sequence at `act_steps`: one ACT step on a real batch, times act_steps (the steps cost the same)."""
    import numpy as np

    from .encoding import encode_grid

    if not jobs:
        return 0.0
    inputs = np.stack([encode_grid(j.augmentation.apply(task_set.tasks[j.task_id].test[j.test_index].input))
                       for j in jobs]).astype(np.int64)
    ids = torch.tensor([j.identifier for j in jobs], device=trainer.device)
    x = torch.from_numpy(inputs).to(trainer.device)
    best = float("inf")
    for _ in range(2):
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = clock()
        trainer.model.predict(x, ids, act_steps=1)
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, clock() - t0)
    return best * act_steps / len(jobs)


def _projection(throughput: Throughput, chosen, n_inputs: int, dist: DistInfo) -> dict[str, Any]:
    """What the same plan would do in 12 h on this machine, for the (larger) hidden rerun."""
    rerun_inputs = math.ceil(n_inputs * RERUN_TEST_INPUT_FACTOR / dist.world_size)
    full = plan(12 * 3600.0, throughput, rerun_inputs, PlanOptions(max_variants=512))
    steps = projected_steps(throughput.train_step_s, 12.0, infer_s=full.infer_seconds_reserved) \
        if throughput.train_step_s < 1e9 else 0
    return {"hours": 12, "rerun_test_inputs_per_rank": rerun_inputs, "infer_variants": full.infer_variants,
            "infer_seconds_reserved": full.infer_seconds_reserved, "train_steps": steps}


def _vote_in_rounds(opts, trainer: Trainer, task_set, variant_index, n_variants: int, throughput: Throughput,
                    budget: Budget, timeline: Timeline, book: VoteBook, submission_path: Path, act_steps: int,
                    dist: DistInfo, stop, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    rounds = inference_rounds(max(1, n_variants), first_round=opts.first_round)
    # Time left after the plan's rounds (the speed was over-estimated, or training ended early) goes to more
    # variants, up to the preferred maximum: rounds span all tasks, so the deadline may cut one anywhere.
    available = max(len(v) for v in variant_index.variants.values())
    ceiling = min(available, opts.max_variants or max(opts.preferred_variants))
    start = rounds[-1][1]
    while start < ceiling:
        stop_at = min(ceiling, start + max(opts.first_round, start))
        rounds.append((start, stop_at))
        start = stop_at
    done_rounds: list[dict[str, Any]] = []
    per_row_s = throughput.infer_variant_s
    # Seconds per row seen on the last batch (first guess: the measured speed) and the rows of the next batch.
    # No batch starts that would end inside the final-write reserve at that speed, so inference slower than
    # measured still stops before the deadline.
    speed = {"row_s": per_row_s, "next_rows": opts.infer_batch_size, "t": budget.clock(), "done": 0}

    def on_batch(done: int, total: int) -> None:
        now = budget.clock()
        if done > speed["done"]:
            speed["row_s"] = (now - speed["t"]) / (done - speed["done"])
        speed.update(t=now, done=done, next_rows=min(opts.infer_batch_size, total - done))
        if progress is not None:
            progress(done, total)

    should_stop = lambda: stop() or budget.work_remaining() <= speed["row_s"] * speed["next_rows"]  # noqa: E731
    with trainer.inference_weights() as model, timeline.phase("infer", planned_variants=n_variants) as ph:
        queue = collections.deque(rounds)
        while queue:
            lo, hi = queue.popleft()
            planned_hi = hi
            jobs_here = len(build_jobs(task_set, variant_index, (lo, hi), (dist.rank, dist.world_size)))
            speed["next_rows"] = min(opts.infer_batch_size, max(jobs_here, 1))
            # Collective: a rank leaving the loop alone would leave the others waiting in all_gather forever.
            if any_rank(should_stop(), dist):
                break
            if jobs_here * per_row_s > budget.work_remaining():
                # Re-plan: this round would overrun; shrink it to what fits, keeping it across all tasks.
                fit = max(1, int(budget.work_remaining() / max(per_row_s, 1e-9) * (hi - lo) / max(jobs_here, 1)))
                timeline.event("replan_round", planned=[lo, hi], now=[lo, lo + fit])
                hi = lo + min(fit, hi - lo)
            hi = broadcast_object(hi, dist)  # every rank votes the same variants
            if hi < planned_hi:
                queue.appendleft((hi, planned_hi))  # the part cut off comes next: no variant is skipped
            round_book = VoteBook()
            speed.update(t=budget.clock(), done=0)
            t0 = speed["t"]
            with timeline.phase(f"round {lo}-{hi}"):
                try:
                    jobs = run_votes(model, task_set, variant_index, (lo, hi), round_book,
                                     batch_size=opts.infer_batch_size, device=trainer.device,
                                     act_steps=act_steps, should_stop=should_stop, progress=on_batch,
                                     shard=(dist.rank, dist.world_size))
                except Exception as exc:  # noqa: BLE001 - keep every vote already counted
                    log.exception("inference round %d-%d failed; keeping the votes so far", lo, hi)
                    timeline.event("round_failed", error=repr(exc))
                    jobs = 0
            elapsed = budget.clock() - t0
            if jobs:
                per_row_s = max(per_row_s, elapsed / jobs)  # slower than measured: later rounds plan with this
            for shard_book in all_gather_objects(round_book.to_dict(), dist):
                book.merge(VoteBook.from_dict(shard_book))
            done_rounds.append({"variants": [lo, hi], "jobs": jobs, "seconds": elapsed})
            if dist.is_main:
                try:
                    write_submission(build_submission(task_set, book.predictions()), submission_path)
                except Exception:  # noqa: BLE001 - a full disk: the last file written stays, the next round retries
                    log.exception("could not write the submission after round %d-%d; the last one written stands",
                                  lo, hi)
                    timeline.event("write_failed", round=[lo, hi])
        ph.info.update(rounds=len(done_rounds))
    return {"planned_variants": n_variants, "rounds": done_rounds, "votes": book.num_votes(),
            "variants_completed": done_rounds[-1]["variants"][1] if done_rounds else 0,
            "seconds_per_sequence": per_row_s}


def _finish(opts: RunOptions, report: dict[str, Any], timeline: Timeline, out: Path, submission_path: Path,
            task_set: TaskSet | None, book: VoteBook | None, predictions: dict[str, Any] | None = None) -> None:
    """The last word: the best submission, the report, the timeline and its plot. Never raises."""
    try:
        if task_set is not None and book is not None and book.num_votes():
            ranked = book.predictions() if predictions is None else predictions
            write_submission(build_submission(task_set, ranked), submission_path)
    except Exception:  # noqa: BLE001 - the previous (valid) file stays in place
        log.exception("could not write the final submission; the last one written stands")
    report["submission"] = str(submission_path)
    report["elapsed_s"] = timeline.now_s()
    if opts.solutions and submission_path.is_file():
        try:
            score = score_submission(submission_path, opts.solutions)
            report["score"] = {"pass@1": score.pass_at_1, "pass@2": score.pass_at_2, "tasks": score.num_tasks}
        except Exception as exc:  # noqa: BLE001
            report["score"] = {"error": repr(exc)}
    # The report first, the plot last: importing matplotlib takes seconds, and a run stopped at its deadline
    # (by a supervisor or the notebook) should still leave the report.
    try:
        import json

        from .submission import _json_default  # same encoder as the submission

        tmp = out / ".report.json.tmp"
        tmp.write_text(json.dumps(report, indent=1, default=_json_default))
        tmp.replace(out / "report.json")
    except Exception:  # noqa: BLE001
        log.exception("could not write report.json")
    try:
        timeline.to_json(out / "timeline.json")
        timeline.plot(out / "timeline.png")
    except Exception:  # noqa: BLE001
        log.exception("could not write the timeline")


def _rescore_reserve_s(opts: RunOptions, throughput: Throughput, n_inputs: int) -> float:
    """Seconds kept after voting for rescoring: one row per (test input, view), on rank 0, with the safety factor."""
    if opts.selection != "rescore":
        return 0.0
    return opts.safety_factor * n_inputs * opts.rescore_augmentations * throughput.infer_variant_s


def _rescore_votes(opts: RunOptions, trainer: Trainer, task_set, variant_index, book: VoteBook, budget: Budget,
                   timeline: Timeline, submission_path: Path, act_steps: int, stop):
    """Rank 0 re-ranks the pooled votes (rescore.py) and writes the submission; a test input it has no time for
    keeps its vote order. Returns (predictions, or None when the vote order stands; the report entry)."""
    from .rescore import rescore

    t0 = time.perf_counter()
    try:
        with trainer.inference_weights() as model, timeline.phase("rescore"):
            predictions = rescore(model, task_set, variant_index, book, top_k=opts.rescore_top_k,
                                  n_augmentations=opts.rescore_augmentations, batch_size=opts.infer_batch_size,
                                  device=trainer.device, act_steps=act_steps,
                                  should_stop=lambda: stop() or budget.work_remaining() <= 0)
        write_submission(build_submission(task_set, predictions), submission_path)
    except Exception as exc:  # noqa: BLE001 - the voted submission already on disk stands
        log.exception("rescoring failed; the vote order stands")
        timeline.event("rescore_failed", error=repr(exc))
        return None, {"error": repr(exc)}
    return predictions, {"top_k": opts.rescore_top_k, "augmentations": opts.rescore_augmentations,
                         "seconds": time.perf_counter() - t0}


def _write_learning_curve(history: list[dict[str, Any]], path: Path, report: dict[str, Any]) -> None:
    """learning_curve.png from the training history (running loss, exact accuracy of halted rows). Never raises."""
    try:
        from .learning_curve import history_points, plot_learning_curve

        note = f"{len(history)} steps this run on {report.get('device')}, budget {report.get('budget_s', 0):.0f} s"
        plot_learning_curve(path, history_points(history), title="Post-training (training batches)", note=note)
    except Exception:  # noqa: BLE001 - a missing plot must never cost the submission
        log.exception("could not write the learning curve")


# ------------------------------------------------------------------------------------------------ pre-training
@dataclass
class PretrainOptions:
    data: list[tuple[str, str | None]]  # (challenges, solutions) pairs; solved test pairs are trained on too
    out_dir: str
    model: dict[str, Any] = field(default_factory=dict)  # TRMConfig fields; ignored when init_checkpoint is given
    init_checkpoint: str | None = None
    train: TrainConfig = field(default_factory=lambda: TrainConfig(include_test_pairs=True, lr=1e-4, emb_lr=1e-2))
    steps: int | None = None
    budget_s: float | None = None
    save_every_s: float = 300.0
    device: str = "auto"


def pretrain_pipeline(opts: PretrainOptions, clock: Callable[[], float] = time.time,
                      on_step: Callable[[StepStats], None] | None = None) -> dict[str, Any]:
    """Pre-train (from scratch or a checkpoint) with the same loop, saving our checkpoint format periodically.

    Resumable: a second call on the same out_dir continues from out_dir/state, so a long run can be spread over
    several short sessions (the cumulative step count is kept in the manifest's provenance).
    """
    from .checkpoint import save_checkpoint
    from .model import TinyRecursiveModel, TRMConfig
    from .tasks import merge_task_sets

    if not opts.steps and not opts.budget_s:
        raise ConfigError("pretrain needs --steps or --budget (or both)")
    dist = init_distributed(None if opts.device == "auto" else opts.device)
    out = Path(opts.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    task_set = merge_task_sets(*(load_tasks(c, s) for c, s in opts.data))
    tasks = _valid_tasks(task_set)
    variant_index = build_variant_index(tasks, n=opts.train.num_variants, seed=opts.train.seed)
    torch.manual_seed(opts.train.seed)
    if opts.init_checkpoint:
        model = load_checkpoint(opts.init_checkpoint)
        model.resize_puzzle_table(variant_index.num_identifiers, mean=model.checkpoint_mean)
    else:
        model = TinyRecursiveModel(TRMConfig(**{**opts.model, "num_puzzle_identifiers": variant_index.num_identifiers}))
    train_cfg = TrainConfig.from_dict({**asdict(opts.train), "include_test_pairs": True,
                                       "save_every_s": opts.save_every_s})
    trainer = Trainer(model, tasks, train_cfg, variant_index, dist=dist)
    state_dir = out / "state"
    if (state_dir / "train_state.json").is_file():
        meta = trainer.load_state(state_dir)
        log.warning("resumed pre-training from step %d", meta["step"])
    budget = Budget.from_duration(opts.budget_s, clock=clock) if opts.budget_s else None
    target = opts.steps if opts.steps else None
    # The schedule must not depend on how the run is bounded: `--steps N` then reproduces a run that a
    # `--budget` stopped at step N, bit for bit (a constant LR ignores the total; warm-up is not capped).
    trainer.set_total_steps(target if train_cfg.lr_schedule == "cosine" and target else 10**6)
    started = time.perf_counter()
    provenance = {"kind": "pretrained", "data": [[c, s] for c, s in opts.data], "tasks": len(tasks),
                  "examples_per_epoch": trainer.sampler.examples_per_epoch, "train_config": asdict(train_cfg)}

    def save_all() -> None:
        trainer.save_state(state_dir)
        if dist.is_main:
            # An EMA without warm-up is mostly its random start until steps x (1 - rate) is large (0.999^260 =
            # 0.77): export it only once it has forgotten that start (e^-5), else the live weights.
            rate = trainer.config.ema_rate
            use_ema = trainer.ema is not None and trainer.step * (1 - rate) >= 5
            weights = trainer.inference_weights() if use_ema else contextlib.nullcontext()
            with weights:
                save_checkpoint(model, out / "checkpoint", provenance={
                    **provenance, "steps": trainer.step, "device": str(dist.device),
                    "weights": f"EMA {rate}" if use_ema else "live (the EMA has not yet forgotten its random start)"})

    summary = trainer.train(max_steps=target, on_step=on_step, save_state=save_all,
                            should_stop=(lambda: budget.work_remaining() <= 0) if budget else (lambda: False))
    save_all()
    barrier(dist)
    return {"steps": trainer.step, "steps_this_run": summary.steps_done, "stopped_by": summary.stopped_by,
            "seconds": time.perf_counter() - started, "checkpoint": str(out / "checkpoint"),
            "tasks": len(tasks), "history": summary.history}
