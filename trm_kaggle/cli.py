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
    submission = build_submission(task_set, book.predictions())
    problems = validate_submission(submission, task_set)
    if problems:  # cannot happen by construction; never overwrite the valid fallback with a bad file
        raise SubmissionError(f"built submission is invalid ({len(problems)} problems), e.g. {problems[0]}")
    write_submission(submission, args.out)
    print(f"{args.out}: {done} jobs, {book.num_votes()} votes, {time.monotonic() - started:.1f} s",
          file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse itself exits 2 on a usage error
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
