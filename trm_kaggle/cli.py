"""Command line: `trm-kaggle <command> ...` (or `python -m trm_kaggle.cli <command> ...`).

    trm-kaggle validate-submission submission.json arc-agi_test_challenges.json
    trm-kaggle score submission.json arc-agi_evaluation_solutions.json

Each command is one small function that takes the parsed arguments and returns an exit code; it is
registered with `@command(...)`, which also declares its arguments.  Exit codes: 0 success, 1 the
command ran and found a problem (e.g. an invalid submission), 2 a user error such as an unreadable
file (any TrmKaggleError, printed as one line), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
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


# ------------------------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse itself exits 2 on a usage error
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
