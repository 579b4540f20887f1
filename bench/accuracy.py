"""Accuracy: post-train a checkpoint on held-out ARC tasks under a fixed budget, then score vote vs rescore.

    python bench/accuracy.py --checkpoint checkpoints/trm-cpu-small --small-grids --tasks 20 --budget 6m \
        --seed 0 --machine "2-core CPU sandbox"
    python bench/accuracy.py --checkpoint checkpoints/trm-arc1 --tasks 400 --budget 2h --variants 64 --device cuda

Held-out tasks are ARC-AGI-1 evaluation tasks (not in the bundled checkpoint's pre-training data; ids found in
the checkpoint's recorded pre-training files are dropped anyway). Post-training sees only their *train* pairs:
the challenges are loaded without solutions, so the trainer never holds a test output; the solutions file is
read only to score.

What it measures, on one post-trained model:
  * pass@1 and pass@2 on the test inputs, with candidates ranked by `vote` (votes, then mean q) and by
    `rescore` (trm_kaggle/rescore.py), each with a 95% Wilson score interval over tasks, and the paired
    comparison (tasks rescore wins / loses at pass@2, exact two-sided sign test);
  * a learning curve: train-pair exact accuracy (trm_kaggle.train.exact_accuracy, identity variant) and held-out
    pass@2 (vote) at a few points from step 0 to the end, written as learning_curve.png.

Wilson rather than a bootstrap: at the near-zero scores a CPU checkpoint gets, a bootstrap over tasks gives the
degenerate interval [0, 0], while Wilson still says how large the score could be (0/20 tasks -> [0, 16%]).
A task with several test inputs scores a fraction; the interval counts the summed task scores as successes.

The budget covers everything after loading: the step-0 evaluation is timed per model row, the later evaluations
and the rescoring are reserved at that speed (x1.1, re-measured at every point), and training gets the rest,
split evenly between the curve points. Points before the last vote over --curve-variants (2) to stay cheap; the
last votes over --variants.

Choices for small budgets (all flags): every task gets only --num-variants embedding rows (default: as many as
are voted or rescored, 8), so the rows used at inference are the rows trained; the EMA rate is 0.99 (0.999 over
a few hundred steps would keep ~90% of the pre-trained trunk); LR 1e-3 / 1e-2, the bundled checkpoint's
pre-training recipe. --small-grids keeps tasks whose train grids and test inputs are all <= 10x10: the canvas is
30x30 whatever the grid, so this saves no compute, it picks the tasks a tiny model has a chance on.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/accuracy.py` from a checkout that is not pip-installed
    sys.path.insert(0, str(ROOT))

from trm_kaggle.augment import build_variant_index  # noqa: E402
from trm_kaggle.budget import parse_duration  # noqa: E402
from trm_kaggle.checkpoint import load_checkpoint  # noqa: E402
from trm_kaggle.distributed import DistInfo  # noqa: E402
from trm_kaggle.learning_curve import history_points, plot_learning_curve  # noqa: E402
from trm_kaggle.rescore import rescore  # noqa: E402
from trm_kaggle.submission import build_submission, load_solutions, score_submission  # noqa: E402
from trm_kaggle.tasks import TaskSet, load_tasks  # noqa: E402
from trm_kaggle.train import Trainer, TrainConfig, exact_accuracy  # noqa: E402
from trm_kaggle.vote import VoteBook, run_votes  # noqa: E402

ARC_DATA = ROOT.parent / "shared" / "arc-data"
DEFAULT_CHALLENGES = ARC_DATA / "arc-agi_evaluation_challenges.json.gz"
DEFAULT_SOLUTIONS = ARC_DATA / "arc-agi_evaluation_solutions.json.gz"
DEFAULT_CHECKPOINT = ROOT / "checkpoints" / "trm-cpu-small"
Z95 = 1.959964
SAFETY = 1.1  # evaluation time kept = measured seconds per model row x rows to come x this


# ------------------------------------------------------------------------------------------------ statistics
def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval for a proportion (successes may be fractional: summed task scores)."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided sign-test p-value for paired wins/losses (ties dropped)."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


# ------------------------------------------------------------------------------------------------ tasks
def pretraining_task_ids(model) -> set[str]:
    """Task ids in the files the checkpoint says it was pre-trained on (best effort: unreadable files skipped)."""
    ids: set[str] = set()
    for entry in model.checkpoint_manifest.get("provenance", {}).get("data", []) or []:
        challenges = entry[0] if isinstance(entry, (list, tuple)) else entry
        for base in (Path(challenges), ROOT / challenges, Path.cwd() / challenges, ARC_DATA / Path(challenges).name):
            if base.is_file():
                try:
                    ids |= set(load_tasks(base).task_ids)
                except Exception:  # noqa: BLE001 - a guard, not a requirement
                    pass
                break
    return ids


def select_tasks(task_set: TaskSet, solutions: dict, n: int, small: bool, max_side: int, seed: int,
                 exclude: set[str]) -> TaskSet:
    """n tasks drawn (seeded) from the valid, solved, not pre-trained ones; --small-grids looks only at train
    pairs and test inputs, never at the test outputs."""
    eligible = []
    for task_id in task_set.task_ids:
        task = task_set.tasks.get(task_id)
        if task is None or task_id in exclude or len(solutions.get(task_id, [])) != len(task.test):
            continue
        if small:
            grids = [g for ex in task.train for g in (ex.input, ex.output)] + [ex.input for ex in task.test]
            if max(max(g.shape) for g in grids) > max_side:
                continue
        eligible.append(task_id)
    if not eligible:
        raise SystemExit("no eligible task (try without --small-grids or a larger --max-side)")
    rng = np.random.default_rng(seed)
    picked = set(rng.choice(eligible, size=min(n, len(eligible)), replace=False).tolist())
    ids = [t for t in eligible if t in picked]  # file order
    return TaskSet(task_set.source, ids, {t: task_set.tasks[t] for t in ids}, {})


# ------------------------------------------------------------------------------------------------ evaluation
def score(task_set: TaskSet, predictions, solutions) -> dict:
    result = score_submission(build_submission(task_set, predictions), {t: solutions[t] for t in task_set.task_ids})
    per_task = {t: (s.pass_at_1, s.pass_at_2) for t, s in result.tasks.items()}
    n = len(per_task)
    out = {"tasks": n}
    for k, idx in (("pass@1", 0), ("pass@2", 1)):
        total = sum(v[idx] for v in per_task.values())
        lo, hi = wilson(total, n)
        out[k] = {"value": total / n if n else float("nan"), "solved_tasks": total, "ci95_wilson": [lo, hi]}
    # Below exact match: does attempt 1 have the right shape, and how many of its cells are right?
    shapes, cells = [], []
    for task_id in task_set.task_ids:
        for i, truth in enumerate(solutions[task_id]):
            ranked = predictions.get(task_id, [])
            first = np.asarray(ranked[i][0]) if i < len(ranked) and ranked[i] else None
            same = first is not None and first.shape == truth.shape
            shapes.append(same)
            cells.append(float((first == truth).mean()) if same else 0.0)
    out["attempt1_shape_match"] = sum(shapes) / len(shapes) if shapes else float("nan")
    out["attempt1_cell_accuracy"] = sum(cells) / len(cells) if cells else float("nan")
    out["per_task"] = per_task
    return out


def vote_once(model, task_set, index, args, variants: int) -> VoteBook:
    book = VoteBook()
    run_votes(model, task_set, index, (0, variants), book, batch_size=args.infer_batch, device=args.device,
              act_steps=args.act_steps)
    return book


def curve_point(trainer: Trainer, task_set, index, solutions, args, started: float, losses: list[float],
                variants: int):
    """Train-pair exact accuracy and held-out pass@1/2 (vote over `variants`) of the inference weights now."""
    tasks = [task_set.tasks[t] for t in task_set.task_ids]
    t0 = time.monotonic()
    with trainer.inference_weights() as model:
        train_exact = exact_accuracy(model, tasks, index, pairs="train", batch_size=args.infer_batch,
                                     act_steps=args.act_steps, device=args.device)
        book = vote_once(model, task_set, index, args, variants)
    held_out = score(task_set, book.predictions(k=2), solutions)
    point = {"step": trainer.step, "seconds": round(time.monotonic() - started, 1), "train_exact": train_exact,
             "heldout_pass1": held_out["pass@1"]["value"], "heldout_pass2": held_out["pass@2"]["value"],
             "variants": variants, "loss": (sum(losses) / len(losses)) if losses else None,
             "eval_s": round(time.monotonic() - t0, 1)}
    print(f"  step {point['step']:>5}  t {point['seconds']:>6.0f} s  train exact {train_exact:.3f}  "
          f"held-out pass@2 {point['heldout_pass2']:.3f} ({variants} variants)"
          + (f"  loss {point['loss']:.3f}" if losses else ""), flush=True)
    return point, book


def machine_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.machine()} CPU, {os.cpu_count()} cores visible, {torch.get_num_threads()} torch threads"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--challenges", default=str(DEFAULT_CHALLENGES))
    p.add_argument("--solutions", default=str(DEFAULT_SOLUTIONS))
    p.add_argument("--tasks", type=int, default=20, help="held-out tasks, drawn with --seed (default 20)")
    p.add_argument("--small-grids", action="store_true", help="only tasks whose grids are all <= --max-side")
    p.add_argument("--max-side", type=int, default=10)
    p.add_argument("--budget", default="6m", help="wall clock after loading: training + every evaluation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", type=int, default=8, help="voted variants per test input (default 8)")
    p.add_argument("--top-k", type=int, default=8, help="voted candidates rescored (default 8)")
    p.add_argument("--rescore-augmentations", type=int, default=8, help="fixed views per task for rescoring")
    p.add_argument("--rescore-weight", type=float, default=1.0)
    p.add_argument("--num-variants", type=int, default=None,
                   help="trained variants per task (default: max of --variants and --rescore-augmentations)")
    p.add_argument("--curve-points", type=int, default=4, help="learning-curve points, step 0 and the end included")
    p.add_argument("--curve-variants", type=int, default=2,
                   help="voted variants for held-out pass@2 at the points before the last (default 2: cheap)")
    p.add_argument("--global-batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--emb-lr", type=float, default=1e-2)
    p.add_argument("--warmup-steps", type=int, default=20)
    p.add_argument("--ema-rate", type=float, default=0.99)
    p.add_argument("--mode", default="full", choices=["full", "embeddings", "embeddings-then-full", "lora"])
    p.add_argument("--infer-batch", type=int, default=64)
    p.add_argument("--act-steps", type=int, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (on a shared CPU, 1 thread avoids oversubscription)")
    p.add_argument("--machine", default=None, help="hardware as reported (default: detected)")
    p.add_argument("--save-model", action="store_true",
                   help="also write post_trained/ (checkpoint with task table) and book.json, to re-rank offline")
    p.add_argument("--out", default=str(ROOT / "runs" / "accuracy"), help="results.json, learning_curve.png")
    args = p.parse_args(argv)
    if args.curve_points < 2:
        raise SystemExit("--curve-points must be at least 2 (step 0 and the end)")

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    solutions = {t: [np.asarray(g, dtype=np.uint8) for g in grids]
                 for t, grids in load_solutions(args.solutions).items()}
    model = load_checkpoint(args.checkpoint, map_location="cpu")
    exclude = pretraining_task_ids(model)
    task_set = select_tasks(load_tasks(args.challenges), solutions, args.tasks, args.small_grids, args.max_side,
                            args.seed, exclude)
    tasks = [task_set.tasks[t] for t in task_set.task_ids]
    if any(ex.output is not None for t in tasks for ex in t.test):  # loaded without solutions: cannot happen
        raise SystemExit("a test output reached the training tasks")
    n_variants = args.num_variants or max(args.variants, args.rescore_augmentations)
    index = build_variant_index(tasks, n=n_variants, seed=args.seed)
    model.resize_puzzle_table(index.num_identifiers, mean=model.checkpoint_mean)
    config = TrainConfig(global_batch_size=args.global_batch, lr=args.lr, emb_lr=args.emb_lr,
                         warmup_steps=args.warmup_steps, ema_rate=args.ema_rate, mode=args.mode,
                         num_variants=n_variants, seed=args.seed)
    trainer = Trainer(model, tasks, config, index, dist=DistInfo(device=torch.device(args.device)))
    n_inputs = sum(len(t.test) for t in tasks)
    budget_s = parse_duration(args.budget)
    started = time.monotonic()
    print(f"{len(tasks)} held-out tasks ({n_inputs} test inputs, {trainer.sampler.examples_per_epoch} train pairs), "
          f"{n_variants} variants each; budget {budget_s:.0f} s on {args.machine or machine_name()}", flush=True)

    # -- step 0, timed: its cost per model row sizes the time kept for the later points and the final scoring;
    # every later point re-measures it, and each training segment gets an even share of what is then left.
    n_pairs = trainer.sampler.examples_per_epoch
    point_rows = n_pairs + n_inputs * args.curve_variants
    final_rows = n_pairs + n_inputs * (args.variants + args.rescore_augmentations)
    segments = args.curve_points - 1

    def time_left_to_train(done_segments: int, row_s: float) -> float:
        to_evaluate = (segments - 1 - done_segments) * point_rows + final_rows
        return budget_s - (time.monotonic() - started) - SAFETY * row_s * to_evaluate

    points = []
    t0 = time.monotonic()
    point, book = curve_point(trainer, task_set, index, solutions, args, started, [], args.curve_variants)
    points.append(point)
    row_s = (time.monotonic() - t0) / point_rows
    train_s = time_left_to_train(0, row_s)
    if train_s <= 0:
        print(f"warning: the budget leaves no time to train (the evaluations need ~{-train_s + budget_s:.0f} s "
              "from the start)", flush=True)
        segments = 1  # straight to the final evaluation
    history: list[dict] = []
    step_s = [0.0]
    if train_s > 0:
        t0 = time.monotonic()
        trainer.set_total_steps(10**6)
        first = trainer.train_step()  # one step to size the schedule (warm-up is capped at a fifth of the steps)
        step_s[0] = time.monotonic() - t0
        if first is not None:
            history.append(asdict(first))
        trainer.set_total_steps(max(1, int(train_s / max(step_s[0], 1e-6))))
    for i in range(segments):
        losses: list[float] = [history[-1]["loss"]] if i == 0 and history else []
        if train_s > 0:
            seg_end = time.monotonic() + max(0.0, time_left_to_train(i, row_s)) / (segments - i)

            def on_step(stats, losses=losses):
                step_s[0] = stats.seconds
                losses.append(stats.loss)
                history.append(asdict(stats))

            trainer.train(should_stop=lambda seg_end=seg_end: time.monotonic() + step_s[0] > seg_end, on_step=on_step)
        last = i == segments - 1
        t0 = time.monotonic()
        point, book = curve_point(trainer, task_set, index, solutions, args, started, losses,
                                  args.variants if last else args.curve_variants)
        points.append(point)
        if not last:
            row_s = (time.monotonic() - t0) / point_rows

    # -- final: the last point's votes, ranked two ways on the same model
    results = {"vote": score(task_set, book.predictions(k=2), solutions)}
    t0 = time.monotonic()
    with trainer.inference_weights() as m:
        predictions = rescore(m, task_set, index, book, top_k=args.top_k, n_augmentations=args.rescore_augmentations,
                              weight=args.rescore_weight, batch_size=args.infer_batch, device=args.device,
                              act_steps=args.act_steps)
    results["rescore"] = score(task_set, predictions, solutions)
    vote_first = book.predictions(k=1)
    changed = sum(1 for t in task_set.task_ids for i, ranked in enumerate(predictions.get(t, []))
                  if ranked and vote_first[t][i] and not np.array_equal(ranked[0], vote_first[t][i][0]))
    rescore_elapsed = time.monotonic() - t0
    wins = sum(results["rescore"]["per_task"][t][1] > results["vote"]["per_task"][t][1] for t in task_set.task_ids)
    losses_n = sum(results["rescore"]["per_task"][t][1] < results["vote"]["per_task"][t][1] for t in task_set.task_ids)
    elapsed = time.monotonic() - started
    slots = list(book.slots())
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "machine": args.machine or machine_name(), "device": args.device, "seed": args.seed,
        "checkpoint": args.checkpoint,
        "checkpoint_provenance": {k: model.checkpoint_manifest.get("provenance", {}).get(k)
                                  for k in ("kind", "steps", "tasks", "device")},
        "challenges": args.challenges, "solutions": args.solutions, "tasks": len(tasks), "task_ids": task_set.task_ids,
        "test_inputs": n_inputs,
        "small_grids": args.small_grids, "max_side": args.max_side if args.small_grids else None,
        "excluded_pretraining_ids": len(exclude & set(load_tasks(args.challenges).task_ids)),
        "budget_s": budget_s, "elapsed_s": round(elapsed, 1), "train_s_planned": round(max(train_s, 0), 1),
        "steps": trainer.step, "train_config": asdict(config), "variants_voted": args.variants,
        "rescore": {"top_k": args.top_k, "augmentations": args.rescore_augmentations, "weight": args.rescore_weight,
                    "seconds": round(rescore_elapsed, 1), "attempt1_changed": changed,
                    "test_inputs_with_2plus_candidates": sum(len(book.ranked(*s)) >= 2 for s in slots)},
        "results": {k: {kk: vv for kk, vv in v.items() if kk != "per_task"} for k, v in results.items()},
        "paired_pass2": {"rescore_wins": wins, "rescore_losses": losses_n, "sign_test_p": sign_test(wins, losses_n)},
        "per_task": {t: {"vote": results["vote"]["per_task"][t], "rescore": results["rescore"]["per_task"][t]}
                     for t in task_set.task_ids},
        "curve": points,
        "history": history,
    }
    (out / "results.json").write_text(json.dumps(report, indent=1))
    if args.save_model:  # the post-trained model (EMA weights, with its task table) and the final votes
        from trm_kaggle.checkpoint import save_checkpoint

        with trainer.inference_weights() as m:
            save_checkpoint(m, out / "post_trained", include_table=True,
                            provenance={"kind": "post-trained", "bench": "accuracy", "steps": trainer.step,
                                        "task_ids": task_set.task_ids, "num_variants": n_variants,
                                        "seed": args.seed})
        (out / "book.json").write_text(json.dumps(book.to_dict()))
    note = (f"{len(tasks)} held-out ARC-AGI-1 eval tasks{' (grids <= %d)' % args.max_side if args.small_grids else ''}"
            f", seed {args.seed}, budget {budget_s:.0f} s, {report['machine']}; held-out pass@2 by vote over "
            f"{args.curve_variants} variants ({args.variants} at the last point)")
    # Loss from every step (running mean); accuracies only where measured (the history's exact rate is of
    # augmented training batches, not exact_accuracy's identity-variant pairs, so it is left out).
    losses_line = [{"step": p["step"], "loss": p["loss"]} for p in history_points(history, max_points=60)]
    plot_learning_curve(out / "learning_curve.png", [{k: v for k, v in p.items() if k != "loss"} for p in points]
                        + losses_line, title="Post-training on held-out tasks", note=note)
    print(markdown(report))
    print(f"wrote {out / 'results.json'} and {out / 'learning_curve.png'}")
    return 0


def markdown(report: dict) -> str:
    def cell(r, k):
        v = r[k]
        lo, hi = v["ci95_wilson"]
        return f"{100 * v['value']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"

    lines = ["| selection | pass@1 (95% Wilson) | pass@2 (95% Wilson) |", "|---|---|---|"]
    for name, r in report["results"].items():
        lines.append(f"| {name} | {cell(r, 'pass@1')} | {cell(r, 'pass@2')} |")
    pair = report["paired_pass2"]
    lines.append("")
    lines.append(f"{report['tasks']} tasks ({report['test_inputs']} test inputs), {report['steps']} post-training "
                 f"steps, budget {report['budget_s']:.0f} s (elapsed {report['elapsed_s']:.0f} s), seed "
                 f"{report['seed']}, {report['machine']}, {report['date']}. Paired at pass@2: rescore wins "
                 f"{pair['rescore_wins']}, loses {pair['rescore_losses']} (sign test p = {pair['sign_test_p']:.2f}); "
                 f"rescoring changed attempt 1 on {report['rescore']['attempt1_changed']} of "
                 f"{report['rescore']['test_inputs_with_2plus_candidates']} test inputs with 2+ candidates.")
    lines.append("")
    lines.append("| selection | attempt 1 right shape | attempt 1 cells right (0 if wrong shape) |")
    lines.append("|---|---|---|")
    for name, r in report["results"].items():
        lines.append(f"| {name} | {100 * r['attempt1_shape_match']:.1f}% | {100 * r['attempt1_cell_accuracy']:.1f}% |")
    lines.append("")
    lines.append("| step | seconds | train-pair exact | held-out pass@2 (vote) | variants voted |")
    lines.append("|---|---|---|---|---|")
    for pt in report["curve"]:
        lines.append(f"| {pt['step']} | {pt['seconds']:.0f} | {pt['train_exact']:.3f} | {pt['heldout_pass2']:.3f} "
                     f"| {pt['variants']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
