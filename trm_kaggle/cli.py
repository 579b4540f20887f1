"""Command line: `trm-kaggle <command> ...` (or `python -m trm_kaggle.cli <command> ...`).

    trm-kaggle predict --checkpoint checkpoints/trm-arc2 --challenges arc-agi_test_challenges.json \
                       --augmentations 8 --out submission.json --device cuda
    trm-kaggle validate-submission submission.json arc-agi_test_challenges.json
    trm-kaggle score submission.json arc-agi_evaluation_solutions.json

Each command is one small function that takes the parsed arguments and returns an exit code; it is
registered with `@command(...)`, which also declares its arguments.  Exit codes: 0 success, 1 the
command ran and found a problem (e.g. an invalid submission), 2 a user error such as an unreadable
file (any TrmKaggleError, printed as one line), 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from .errors import TrmKaggleError

Handler = Callable[[argparse.Namespace], int]
# name -> (help, add_arguments, handler); filled by @command below, in the order commands are defined.
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Handler]] = {}


def command(name: str, help: str, arguments: Callable[[argparse.ArgumentParser], None]):
    """Register `handler` as the subcommand `name`, with `arguments` adding its options to its parser."""

    def register(handler: Handler) -> Handler:
        COMMANDS[name] = (help, arguments, handler)
        return handler

    return register


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trm-kaggle",
        description="Turn a pre-trained Tiny Recursive Model into an offline ARC Prize submission.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, add_arguments, handler) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        add_arguments(sub)
        sub.set_defaults(handler=handler)
    return parser


# ------------------------------------------------------------------------------------------- commands


def _validate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("submission", help="submission.json to check")
    p.add_argument("challenges", help="the challenges file it answers (.json or .json.gz)")


@command("validate-submission", "Check a submission against its challenges file.", _validate_arguments)
def cmd_validate_submission(args: argparse.Namespace) -> int:
    from .submission import validate_submission

    problems = validate_submission(args.submission, args.challenges)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{args.submission}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{args.submission}: valid")
    return 0


def _score_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("submission", help="submission.json to score")
    p.add_argument("solutions", help="solutions file: {task_id: [output grid per test input]}")
    p.add_argument("--quiet", action="store_true", help="print only the totals, not the per-task table")


@command("score", "Score a submission against a solutions file (pass@1, pass@2, per task).", _score_arguments)
def cmd_score(args: argparse.Namespace) -> int:
    from .submission import score_submission

    score = score_submission(args.submission, args.solutions)
    if not args.quiet:
        print(f"{'task':<12} {'tests':>5} {'pass@1':>7} {'pass@2':>7}")
        for task in score.tasks.values():
            print(f"{task.task_id:<12} {task.num_tests:>5} {task.pass_at_1:>7.3f} {task.pass_at_2:>7.3f}")
    print(f"tasks {score.num_tasks}  pass@1 {score.pass_at_1:.4f}  pass@2 {score.pass_at_2:.4f}")
    return 0


def _selection_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--selection", choices=["vote", "rescore"], default="vote",
                   help="how candidates are ranked: vote (votes, then mean q; default) or rescore (the top 8 voted "
                        "re-ranked by log vote share + mean log-likelihood under 8 trained views)")


def _predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="DIR",
                   help="checkpoint folder (model.safetensors + manifest.json)")
    p.add_argument("--challenges", required=True, metavar="FILE", help="challenges file (.json or .json.gz)")
    p.add_argument("--augmentations", required=True, type=int, metavar="N",
                   help="variants per task, identity included (each one votes once per test input)")
    p.add_argument("--out", required=True, metavar="FILE", help="submission.json to write")
    p.add_argument("--batch-size", type=int, default=64, help="rows per model call (default 64)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of the variant draw (default 0)")
    p.add_argument("--act-steps", type=int, default=None,
                   help="ACT steps per prediction (default: the checkpoint's halt_max_steps)")
    _selection_argument(p)


class _Progress:
    """tqdm when it is installed, else a counter on stderr (at most about once a second)."""

    def __init__(self, description: str):
        self.description = description
        self.bar = None
        self.last_print = 0.0
        try:
            import tqdm  # optional

            self.tqdm = tqdm.tqdm
        except ImportError:
            self.tqdm = None

    def __call__(self, done: int, total: int) -> None:
        if self.tqdm is not None:
            if self.bar is None:  # run_votes reports (0, total) before its first batch
                self.bar = self.tqdm(total=total, desc=self.description, unit="job", file=sys.stderr)
            self.bar.update(done - self.bar.n)
            return
        now = time.monotonic()
        if now - self.last_print >= 1.0 or done == total:
            self.last_print = now
            end = "\n" if done == total else ""
            print(f"\r{self.description}: {done}/{total} jobs", end=end, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@command("predict", "Vote with a checkpoint over augmented test inputs and write a submission.", _predict_arguments)
def cmd_predict(args: argparse.Namespace) -> int:
    import torch

    from .augment import build_variant_index
    from .checkpoint import load_checkpoint
    from .errors import ConfigError, SubmissionError
    from .submission import build_submission, fallback_attempts, validate_submission, write_submission
    from .tasks import load_tasks
    from .vote import VoteBook, run_votes

    if args.augmentations < 1:
        raise ConfigError(f"--augmentations must be at least 1, got {args.augmentations}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")

    task_set = load_tasks(args.challenges)
    # A valid file exists before anything that can fail or run out of time.
    write_submission(fallback_attempts(task_set), args.out)
    print(f"{args.out}: fallback for {len(task_set.task_ids)} tasks written", file=sys.stderr)

    torch.manual_seed(args.seed)
    model = load_checkpoint(args.checkpoint, map_location=args.device)
    tasks = [task_set.tasks[t] for t in task_set.task_ids if t in task_set.tasks]
    variant_index = build_variant_index(tasks, n=args.augmentations, seed=args.seed)
    # Every variant starts at the checkpoint's mean task embedding: the voter sees no trained rows here.
    model.resize_puzzle_table(variant_index.num_identifiers, mean=getattr(model, "checkpoint_mean", None))
    model.eval()

    book = VoteBook()
    progress = _Progress("voting")
    started = time.monotonic()
    try:
        done = run_votes(model, task_set, variant_index, (0, args.augmentations), book,
                         batch_size=args.batch_size, device=args.device, act_steps=args.act_steps,
                         progress=progress)
    except KeyboardInterrupt:
        # Keep what was voted: the partial submission is at least as good as the fallback.
        progress.close()
        write_submission(build_submission(task_set, book.predictions()), args.out)
        raise
    progress.close()
    predictions = book.predictions()
    if args.selection == "rescore":
        from .rescore import rescore

        rescoring = _Progress("rescoring")
        try:
            predictions = rescore(model, task_set, variant_index, book, n_augmentations=min(8, args.augmentations),
                                  batch_size=args.batch_size, device=args.device, act_steps=args.act_steps,
                                  progress=rescoring)
        except KeyboardInterrupt:  # the votes stand
            rescoring.close()
            write_submission(build_submission(task_set, predictions), args.out)
            raise
        rescoring.close()
    submission = build_submission(task_set, predictions)
    problems = validate_submission(submission, task_set)
    if problems:  # cannot happen by construction; never overwrite the valid fallback with a bad file
        raise SubmissionError(f"built submission is invalid ({len(problems)} problems), e.g. {problems[0]}")
    write_submission(submission, args.out)
    print(f"{args.out}: {done} jobs, {book.num_votes()} votes, {time.monotonic() - started:.1f} s",
          file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------- run / rehearse / pretrain

_REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CHECKPOINT = _REPO_ROOT / "checkpoints" / "trm-cpu-small"
DEFAULT_CHALLENGES = _REPO_ROOT / "sample_data" / "arc-agi_test_challenges.json"


def _train_arguments(p: argparse.ArgumentParser, pretraining: bool = False) -> None:
    from .train import TrainConfig

    d = TrainConfig()
    g = p.add_argument_group("training (defaults: the paper's post-training recipe)")
    g.add_argument("--mode", default=d.mode, choices=["full", "embeddings", "embeddings-then-full", "lora"],
                   help="what post-training updates (default full: the paper's winner)")
    g.add_argument("--embeddings-fraction", type=float, default=d.embeddings_fraction,
                   help="embeddings-then-full: share of steps with the trunk frozen (default 0.25)")
    g.add_argument("--lr", type=float, default=1e-4 if pretraining else d.lr,
                   help="trunk AdamATan2 LR (post-training default 2e-4, the paper's text at batch 384; "
                        "the fork's configs use 1e-4)")
    g.add_argument("--emb-lr", type=float, default=1e-2 if pretraining else d.emb_lr,
                   help="task-embedding sign-SGD LR (default 2e-2 post-training)")
    g.add_argument("--adam-variant", default=d.adam_variant, choices=["fork", "upstream"],
                   help="fork: adam-atan2-pytorch rule (a=1.27), used for the paper's models; upstream: adam-atan2")
    g.add_argument("--global-batch", type=int, default=d.global_batch_size, help="global batch (default %(default)s; the paper: 384)")
    g.add_argument("--micro-batch", type=int, default=None, help="rows per forward on one rank (accumulates)")
    g.add_argument("--warmup-steps", type=int, default=d.warmup_steps,
                   help="LR warm-up steps (default 2000, capped at a fifth of the planned steps)")
    g.add_argument("--num-variants", type=int, default=d.num_variants,
                   help="augmented variants per task, each with its own embedding row (default 1000)")
    g.add_argument("--embedding-init", default=d.embedding_init, choices=["mean", "normal"])
    g.add_argument("--lora-rank", type=int, default=d.lora_rank)
    g.add_argument("--lora-alpha", type=float, default=d.lora_alpha)
    g.add_argument("--no-ema", action="store_true", help="vote with the live weights instead of the EMA")
    g.add_argument("--no-translate", action="store_true", help="no translation augmentation")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")


def _train_config(args: argparse.Namespace, pretraining: bool = False):
    from .train import TrainConfig

    return TrainConfig(mode=args.mode, embeddings_fraction=args.embeddings_fraction, lr=args.lr, emb_lr=args.emb_lr,
                       adam_variant=args.adam_variant, global_batch_size=args.global_batch,
                       micro_batch=args.micro_batch, warmup_steps=args.warmup_steps, num_variants=args.num_variants,
                       embedding_init=args.embedding_init, lora_rank=args.lora_rank, lora_alpha=args.lora_alpha,
                       ema=not args.no_ema, translate=not args.no_translate, seed=args.seed,
                       include_test_pairs=pretraining)


def _run_arguments(p: argparse.ArgumentParser, rehearsal: bool = False) -> None:
    required = not rehearsal
    p.add_argument("--checkpoint", required=required, default=None if required else str(DEFAULT_CHECKPOINT),
                   help="our checkpoint folder (model.safetensors + manifest.json)")
    p.add_argument("--challenges", required=required, default=None if required else str(DEFAULT_CHALLENGES),
                   help="Kaggle challenges file (.json or .json.gz)")
    p.add_argument("--solutions", default=None, help="solutions file: score the submission at the end")
    p.add_argument("--budget", default="5m" if rehearsal else "12h",
                   help="wall-clock budget for everything, e.g. 12h, 90m, 1h30m (default %(default)s)")
    p.add_argument("--out", required=required, default=None if required else "runs/rehearsal",
                   help="output folder: submission.json, report.json, timeline.json/png, state/")
    p.add_argument("--max-steps", type=int, default=None, help="cap on training steps (default: the plan's)")
    p.add_argument("--max-variants", type=int, default=None,
                   help="cap on inference variants per test input (default: the plan's 512, 256 or what fits)")
    p.add_argument("--infer-batch", type=int, default=64, help="rows per inference call (default 64)")
    p.add_argument("--act-steps", type=int, default=None, help="ACT steps at inference (default halt_max_steps)")
    p.add_argument("--no-resume", action="store_true", help="ignore a saved training state in --out")
    p.add_argument("--save-every", default="5m", metavar="DURATION",
                   help="save the training state in --out this often, for a rerun to resume from (default 5m)")
    _selection_argument(p)
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="N local ranks (one per GPU, or gloo on CPU) under a supervisor that recovers from a dead "
                        "rank with a single-process run (default 1: no supervisor)")
    p.add_argument("--deadline", type=float, default=None, metavar="UNIX_TIME",
                   help="absolute end time (Unix seconds), instead of --budget from now; the supervisor passes it "
                        "to its ranks")
    _train_arguments(p)


def _run(args: argparse.Namespace, rehearsal: bool) -> int:
    import os
    from dataclasses import replace

    from .budget import parse_duration
    from .errors import ConfigError

    budget_s = parse_duration(args.budget)
    if args.nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {args.nproc}")
    if args.nproc > 1 and "RANK" not in os.environ:  # the parent; its ranks have RANK set and run below
        from .supervise import margin_s, supervise

        deadline = args.deadline if args.deadline is not None else time.time() + budget_s
        margin = margin_s(deadline - time.time())
        return supervise(args.argv, args.nproc, deadline - margin, args.out, args.challenges,
                         grace_s=margin / 3)

    from .pipeline import RunOptions, run_pipeline

    opts = RunOptions(checkpoint=args.checkpoint, challenges=args.challenges, out_dir=args.out,
                      budget_s=budget_s, solutions=args.solutions,
                      train=replace(_train_config(args), save_every_s=parse_duration(args.save_every)),
                      max_steps=args.max_steps, max_variants=args.max_variants, infer_batch_size=args.infer_batch,
                      selection=args.selection,
                      act_steps=args.act_steps, device=args.device, resume=not args.no_resume,
                      deadline=args.deadline)
    main_rank = os.environ.get("RANK", "0") == "0"  # under --nproc, one rank speaks for all
    steps = _StepPrinter()
    result = run_pipeline(opts, on_step=steps if main_rank else None)
    steps.close()
    if main_rank:
        _print_summary(result.report, rehearsal)
    return result.exit_code


class _StepPrinter:
    """A progress line for training: step, loss, seconds per step (tqdm-free, at most once every 2 s)."""

    def __init__(self) -> None:
        self.last = 0.0

    def __call__(self, stats) -> None:
        now = time.monotonic()
        if now - self.last >= 2.0:
            self.last = now
            print(f"\rtrain step {stats.step}: loss {stats.loss:.4f}, {stats.seconds:.2f} s/step",
                  end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.last:
            print(file=sys.stderr)


def _print_summary(report: dict, rehearsal: bool) -> None:
    tp, pl, proj = report.get("throughput", {}), report.get("plan", {}), report.get("projection_12h", {})
    train, inf = report.get("train", {}), report.get("inference", {})
    lines = [f"submission: {report.get('submission')}  ({report.get('tasks', {}).get('total', '?')} tasks, "
             f"{len(report.get('tasks', {}).get('invalid', {}))} invalid)"]
    if tp:
        step_s, var_s = tp.get("train_step_s", 0), tp.get("infer_variant_s", 0)
        lines.append(f"measured: {1 / step_s if step_s else 0:.3f} train steps/s "
                     f"(batch {report.get('train_batch', '')}), {1 / var_s if var_s else 0:.2f} variants/s at inference")
    if pl:
        lines.append(f"plan: {pl.get('reason')}: {pl.get('train_steps')} steps in {pl.get('train_seconds', 0):.0f} s, "
                     f"{pl.get('infer_variants')} variants per test input")
    if train:
        lines.append(f"trained: {train.get('steps_done')} steps this run (now at step {train.get('final_step')}), "
                     f"stopped by {train.get('stopped_by')}, {train.get('nan_events')} NaN and "
                     f"{train.get('oom_events')} OOM events")
    if inf:
        lines.append(f"voted: {inf.get('votes')} votes, variants 0-{inf.get('variants_completed')} of "
                     f"{inf.get('planned_variants')} planned, {len(inf.get('rounds', []))} rounds")
    if proj:
        lines.append(f"12 h on this machine (rerun-sized test set): {proj.get('train_steps')} training steps + "
                     f"{proj.get('infer_variants')} inference variants")
    if "score" in report:
        lines.append(f"score: {report['score']}")
    lines.append(f"elapsed: {report.get('elapsed_s', 0):.0f} s of {report.get('budget_s', 0):.0f} s; "
                 f"stopped by {report.get('stopped_by', '?')}")
    print("\n".join(lines))


@command("run", "The full pipeline under one deadline: post-train, vote in rounds, write submission.json.",
         _run_arguments)
def cmd_run(args: argparse.Namespace) -> int:
    return _run(args, rehearsal=False)


def _rehearse_arguments(p: argparse.ArgumentParser) -> None:
    _run_arguments(p, rehearsal=True)
    # 384 rows take ~25 s per step on a 2-core CPU: a rehearsal trains on 32 (the plan and projection say so).
    p.set_defaults(global_batch=32)


@command("rehearse", "`run` on local data with a short budget; prints speeds, the plan and a 12-hour projection.",
         _rehearse_arguments)
def cmd_rehearse(args: argparse.Namespace) -> int:
    return _run(args, rehearsal=True)


def _pretrain_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", action="append", required=True, metavar="CHALLENGES[:SOLUTIONS]",
                   help="a challenges file and optional solutions file; repeat for several")
    p.add_argument("--out", required=True, help="output folder: checkpoint/ and state/ (resumable)")
    p.add_argument("--init-checkpoint", default=None, help="start from this checkpoint instead of from scratch")
    p.add_argument("--steps", type=int, default=None, help="total steps (cumulative across resumed runs)")
    p.add_argument("--budget", default=None, help="stop after this long, e.g. 20m")
    p.add_argument("--save-every", default="5m", help="save checkpoint and state this often (default 5m)")
    p.add_argument("--arch", nargs="*", default=[], metavar="KEY=VALUE",
                   help="TRMConfig fields for a model from scratch, e.g. hidden_size=64 num_heads=2")
    _train_arguments(p, pretraining=True)


def _parse_arch(items: Sequence[str]) -> dict:
    from dataclasses import fields

    from .errors import ConfigError
    from .model import TRMConfig

    types = {f.name: f.type for f in fields(TRMConfig)}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in types:
            raise ConfigError(f"--arch {item!r}: expected KEY=VALUE with KEY one of {sorted(types)}")
        kind = {"int": int, "float": float, "str": str, "bool": lambda v: v.lower() in ("1", "true", "yes")}[types[key]]
        out[key] = kind(value)
    return out


@command("pretrain", "Pre-train a checkpoint on challenges+solutions (train and solved test pairs); resumable.",
         _pretrain_arguments)
def cmd_pretrain(args: argparse.Namespace) -> int:
    from .budget import parse_duration
    from .pipeline import PretrainOptions, pretrain_pipeline

    data = []
    for item in args.data:
        challenges, _, solutions = item.partition(":")
        data.append((challenges, solutions or None))
    opts = PretrainOptions(data=data, out_dir=args.out, model=_parse_arch(args.arch),
                           init_checkpoint=args.init_checkpoint, train=_train_config(args, pretraining=True),
                           steps=args.steps, budget_s=parse_duration(args.budget) if args.budget else None,
                           save_every_s=parse_duration(args.save_every), device=args.device)
    steps = _StepPrinter()
    result = pretrain_pipeline(opts, on_step=steps)
    steps.close()
    h = result["history"]
    last = h[-1] if h else {}
    print(f"pretrain: step {result['steps']} ({result['steps_this_run']} this run, stopped by {result['stopped_by']}) "
          f"in {result['seconds']:.0f} s; last loss {last.get('loss', float('nan')):.4f}; "
          f"checkpoint {result['checkpoint']}")
    return 0


# ------------------------------------------------------------------------------------------- convert

def _convert_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("upstream_ckpt", metavar="UPSTREAM_CKPT",
                   help="upstream pretrain.py checkpoint file (step_<N>); all_config.yaml beside it gives the arch")
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder to write: model.safetensors + manifest.json")
    p.add_argument("--arch", nargs="+", action="extend", default=None, metavar="KEY=VALUE",
                   help="upstream arch values, used instead of all_config.yaml, e.g. L_cycles=4 puzzle_emb_len=16 "
                        "(H_cycles, L_cycles, puzzle_emb_len, halt_max_steps, num_heads leave no trace in tensors)")
    p.add_argument("--puzzle-emb-len", type=int, default=None, metavar="N",
                   help="override puzzle_emb_len: 16 for the paper's models, 1 in the fork's yaml")


@command("convert", "Convert an upstream TRM checkpoint once into our format (trunk + mean task embedding).",
         _convert_arguments)
def cmd_convert(args: argparse.Namespace) -> int:
    from .checkpoint import convert_upstream, parse_arch_items

    arch = parse_arch_items(args.arch) if args.arch else None
    overrides = {"puzzle_emb_len": args.puzzle_emb_len} if args.puzzle_emb_len is not None else None
    info = convert_upstream(args.upstream_ckpt, args.out_dir, arch=arch, overrides=overrides)
    before, after = info["bytes_before"], info["bytes_after"]
    print(f"read   {info['source']}: {before / 1e6:,.2f} MB ({info['table_rows_dropped']:,} task-embedding rows, "
          f"kept as their mean; arch from {info['arch_from']})")
    print("config " + " ".join(f"{k}={v}" for k, v in info["config"].items()))
    print(f"wrote  {info['out']}: {after / 1e6:,.2f} MB (model.safetensors + manifest.json), "
          f"{before / max(after, 1):.1f}x smaller")
    return 0


# ------------------------------------------------------------------------------------- hubs

def _fetch_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("repo_id", help="Hugging Face repo of an upstream TRM checkpoint, e.g. Trelis/TRM-ARC-AGI-II")
    p.add_argument("--filename", default=None, help="checkpoint file in the repo (default: the highest step_<N>)")
    p.add_argument("--revision", default=None)
    p.add_argument("--out", default=None, help="output folder (default checkpoints/<repo name>)")
    p.add_argument("--puzzle-emb-len", type=int, default=None, help="override the arch's puzzle_emb_len (16 or 1)")


@command("fetch-checkpoint", "Download an upstream TRM checkpoint from Hugging Face and convert it to ours.",
         _fetch_arguments)
def cmd_fetch_checkpoint(args: argparse.Namespace) -> int:
    from .hub import fetch_checkpoint

    overrides = {"puzzle_emb_len": args.puzzle_emb_len} if args.puzzle_emb_len is not None else None
    info = fetch_checkpoint(args.repo_id, args.filename, args.out, revision=args.revision, arch_overrides=overrides)
    print(f"{info['repo_id']}/{info['filename']}: {info['bytes_before'] / 1e6:.1f} MB -> "
          f"{info['bytes_after'] / 1e6:.1f} MB in {info['out']}")
    return 0


def _publish_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", required=True, choices=["model", "dataset"])
    p.add_argument("handle", help="Kaggle handle, e.g. you/trm-arc2/pyTorch/default (model) or you/trm-wheels")
    p.add_argument("directory", help="the folder to upload (a checkpoint folder for --kind model)")
    p.add_argument("--notes", default="", help="version notes")


@command("publish", "Upload a checkpoint (Kaggle model) or a folder (Kaggle dataset) with kagglehub.",
         _publish_arguments)
def cmd_publish(args: argparse.Namespace) -> int:
    from .hub import publish

    publish(args.kind, args.handle, args.directory, notes=args.notes)
    print(f"uploaded {args.directory} to {args.handle}")
    return 0


# ------------------------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)  # argparse itself exits 2 on a usage error
    args.argv = argv  # `run --nproc N` starts its ranks with the same command line
    if not logging.getLogger().handlers:  # library warnings (e.g. an invalid task) reach stderr
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except TrmKaggleError as exc:
        message = " ".join(str(exc).splitlines()) or type(exc).__name__  # always one line
        print(f"trm-kaggle {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"trm-kaggle {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
