"""The Kaggle submission: build it, write it atomically, check it, score it.

Kaggle format (TRM_FACTS §7.3)::

    {task_id: [{"attempt_1": grid, "attempt_2": grid},   # test input 0
               {"attempt_1": grid, "attempt_2": grid},   # test input 1
               ...], ...}

Every task id of the challenges file must be present with exactly one entry per test input, in order,
and every grid must be a non-empty rectangular list of lists of ints 0..9, at most 30x30.  Upstream's
evaluator skips a test input that got no prediction, which shifts the later entries of that task onto
the wrong inputs (pitfall 25); here every input always gets an entry, falling back per input.

Typical use::

    write_submission(fallback_attempts(task_set), "submission.json")      # something valid first
    write_submission(build_submission(task_set, book.predictions()), "submission.json")
    problems = validate_submission("submission.json", task_set)
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from .errors import SubmissionError, TaskFileError

if TYPE_CHECKING:  # only for annotations; keeps this module importable on its own
    from .tasks import TaskSet

log = logging.getLogger("trm_kaggle.submission")

ATTEMPT_KEYS = ("attempt_1", "attempt_2")
MAX_GRID_SIDE = 30
# The blank guess used wherever nothing better exists. It is a valid grid, so the file always validates.
FALLBACK_GRID: list[list[int]] = [[0]]

GridList = list[list[int]]


# --------------------------------------------------------------------------------------------------
# Grids


def grid_problem(grid: Any) -> str | None:
    """Why `grid` is not a valid Kaggle grid (None when it is). Accepts nested lists or numpy arrays."""
    if isinstance(grid, np.ndarray):
        grid = grid.tolist()
    if not isinstance(grid, list):
        return f"grid is a {type(grid).__name__}, not a list of rows"
    if not grid:
        return "grid has no rows"
    if len(grid) > MAX_GRID_SIDE:
        return f"grid has {len(grid)} rows, more than {MAX_GRID_SIDE}"
    width = None
    for r, row in enumerate(grid):
        if not isinstance(row, list):
            return f"row {r} is a {type(row).__name__}, not a list"
        if not row:
            return f"row {r} is empty"
        if width is None:
            width = len(row)
            if width > MAX_GRID_SIDE:
                return f"grid has {width} columns, more than {MAX_GRID_SIDE}"
        elif len(row) != width:
            return f"row {r} has {len(row)} cells, row 0 has {width} (not rectangular)"
        for c, v in enumerate(row):
            # bool is an int subclass, but JSON true/false is not a colour.
            if isinstance(v, bool) or not isinstance(v, int):
                return f"cell ({r},{c}) is {v!r}, not an int"
            if not 0 <= v <= 9:
                return f"cell ({r},{c}) is {v}, outside 0..9"
    return None


def _as_grid_list(grid: Any) -> GridList | None:
    """A valid grid as lists of Python ints (never numpy scalars, so json.dumps writes plain ints), else None."""
    if grid is None:
        return None
    if isinstance(grid, np.ndarray):
        if grid.ndim != 2 or grid.size == 0 or not np.issubdtype(grid.dtype, np.integer):
            return None
        grid = grid.tolist()  # numpy ints become Python ints here
    if grid_problem(grid) is not None:
        return None
    return [list(row) for row in grid]


# --------------------------------------------------------------------------------------------------
# Building


def _test_inputs(task_set: "TaskSet", task_id: str) -> Sequence[Any]:
    """The test input grids of one task (None where a grid is unusable); at least one entry."""
    task = task_set.tasks.get(task_id)
    if task is not None:
        return [example.input for example in task.test]
    invalid = task_set.invalid.get(task_id)
    if invalid is not None and invalid.test_inputs:
        return list(invalid.test_inputs)
    # The number of test inputs could not be determined: one entry is the best guess.
    return [None]


def _fallback_entry(test_input: Any) -> dict[str, GridList]:
    # Echoing the test input is a common ARC baseline (some tasks leave most of the grid unchanged).
    first = _as_grid_list(test_input) or FALLBACK_GRID
    return {"attempt_1": first, "attempt_2": FALLBACK_GRID}


def fallback_attempts(task_set: "TaskSet") -> dict[str, list[dict[str, GridList]]]:
    """A complete, valid submission that needs no model: written first, so a crash still leaves one."""
    return {
        task_id: [_fallback_entry(grid) for grid in _test_inputs(task_set, task_id)]
        for task_id in task_set.task_ids
    }


def build_submission(
    task_set: "TaskSet", predictions: Mapping[str, Sequence[Sequence[Any]]]
) -> dict[str, list[dict[str, GridList]]]:
    """The Kaggle submission from ranked candidates: predictions[task_id][test_index] = [best, second, ...].

    Per test input the two attempts are the first two distinct valid candidates; where fewer exist the
    gaps are filled from the fallback (the test input itself, then [[0]]), skipping a grid already used,
    so attempt_2 is a second distinct guess rather than a copy of attempt_1.  Invalid or empty (0x0)
    candidates are dropped, never written.
    """
    known = set(task_set.task_ids)
    unknown = [task_id for task_id in predictions if task_id not in known]
    if unknown:
        log.warning("predictions for %d task id(s) not in the challenges ignored, e.g. %r", len(unknown), unknown[0])

    submission: dict[str, list[dict[str, GridList]]] = {}
    for task_id in task_set.task_ids:
        per_input = predictions.get(task_id, ())
        entries = []
        for index, test_input in enumerate(_test_inputs(task_set, task_id)):
            candidates = list(per_input[index]) if index < len(per_input) else []
            fallback = _fallback_entry(test_input)
            attempts: list[GridList] = []
            for candidate in [*candidates, fallback["attempt_1"], fallback["attempt_2"]]:
                grid = _as_grid_list(candidate)
                if grid is not None and grid not in attempts:
                    attempts.append(grid)
                if len(attempts) == 2:
                    break
            if len(attempts) < 2:  # only when the test input itself is [[0]] or unusable
                attempts.append(FALLBACK_GRID)
            entries.append({"attempt_1": attempts[0], "attempt_2": attempts[1]})
        submission[task_id] = entries
    return submission


# --------------------------------------------------------------------------------------------------
# Writing


def _json_default(value: Any) -> Any:
    # Callers may hand us numpy grids or scalars; JSON must hold plain ints.
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.integer):
        return int(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def write_submission(obj: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write `obj` as JSON to `path` atomically: the file is either the old one or the complete new one.

    The text is written to a temporary file in the same directory (same file system, so the rename is
    atomic), flushed and fsynced, then moved over `path` with os.replace.  On any failure the temporary
    file is removed, the previous file is left as it was, and the error is raised (OSError becomes
    SubmissionError).
    """
    path = Path(path)
    try:
        text = json.dumps(obj, default=_json_default, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise SubmissionError(f"submission is not JSON-serialisable: {exc}") from exc

    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise SubmissionError(f"cannot write submission {path}: {exc}") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp makes 0600; a submission is an ordinary, readable file
        os.replace(tmp_name, path)
    except BaseException as exc:
        try:
            os.unlink(tmp_name)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise SubmissionError(f"cannot write submission {path}: {exc}") from exc
        raise
    _fsync_directory(directory)
    return path


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform, and harmless to skip there.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------------
# Reading and validating


class _NotJson(Exception):
    """The file was read but is not JSON: a defect of the submission, not an I/O failure."""


def _read_json(path: str | os.PathLike) -> Any:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise SubmissionError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _NotJson(f"{path} is not JSON: {exc}") from exc


def _expected_entries(challenges: "str | os.PathLike | TaskSet") -> dict[str, int]:
    """task_id -> number of entries the submission must hold, in challenges file order."""
    if isinstance(challenges, (str, os.PathLike)):
        from .tasks import load_tasks  # late import: tasks is the only reader of challenges files

        challenges = load_tasks(challenges)
    return {task_id: len(_test_inputs(challenges, task_id)) for task_id in challenges.task_ids}


def validate_submission(
    submission: "str | os.PathLike | Mapping[str, Any]", challenges: "str | os.PathLike | TaskSet"
) -> list[str]:
    """Every problem with `submission` against `challenges`, one line each; an empty list means valid.

    Raises SubmissionError / TaskFileError only when a file cannot be read at all; a submission file
    that is readable but not JSON is reported as a problem.
    """
    expected = _expected_entries(challenges)
    if isinstance(submission, (str, os.PathLike)):
        try:
            submission = _read_json(submission)
        except _NotJson as exc:
            return [str(exc)]
    if not isinstance(submission, Mapping):
        return [f"submission is a JSON {type(submission).__name__}, not an object keyed by task id"]

    problems: list[str] = []
    for task_id in expected:
        if task_id not in submission:
            problems.append(f"missing task {task_id!r}")
    for task_id in submission:
        if task_id not in expected:
            problems.append(f"extra task {task_id!r} is not in the challenges")

    for task_id, n_expected in expected.items():
        entries = submission.get(task_id)
        if entries is None and task_id not in submission:
            continue
        if not isinstance(entries, list):
            problems.append(f"task {task_id!r}: value is a {type(entries).__name__}, not a list of entries")
            continue
        if len(entries) != n_expected:
            problems.append(
                f"task {task_id!r}: {len(entries)} entries, expected {n_expected} (one per test input)"
            )
        for index, entry in enumerate(entries):
            where = f"task {task_id!r} test {index}"
            if not isinstance(entry, Mapping):
                problems.append(f"{where}: entry is a {type(entry).__name__}, not an object with attempts")
                continue
            for key in ATTEMPT_KEYS:
                if key not in entry:
                    problems.append(f"{where}: missing {key}")
                    continue
                reason = grid_problem(entry[key])
                if reason is not None:
                    problems.append(f"{where} {key}: {reason}")
    return problems


# --------------------------------------------------------------------------------------------------
# Scoring


@dataclass(frozen=True)
class TaskScore:
    """One task: fraction of its test inputs solved by attempt_1 (pass@1) and by either attempt (pass@2)."""

    task_id: str
    num_tests: int
    solved_at_1: int
    solved_at_2: int

    @property
    def pass_at_1(self) -> float:
        return self.solved_at_1 / self.num_tests if self.num_tests else 0.0

    @property
    def pass_at_2(self) -> float:
        return self.solved_at_2 / self.num_tests if self.num_tests else 0.0


@dataclass(frozen=True)
class Score:
    """Kaggle's metric: the mean over tasks of each task's fraction of solved test inputs."""

    pass_at_1: float
    pass_at_2: float
    tasks: dict[str, TaskScore] = field(default_factory=dict)

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)


def load_solutions(solutions: "str | os.PathLike | Mapping[str, Any]") -> dict[str, list[Any]]:
    """Solutions as {task_id: [output grid per test input]} from a .json/.json.gz file or a dict."""
    if isinstance(solutions, Mapping):
        return dict(solutions)
    path = Path(solutions)
    try:
        if path.suffix == ".gz":
            import gzip

            with gzip.open(path, "rb") as handle:
                data = json.loads(handle.read())
        else:
            data = json.loads(path.read_bytes())
    except OSError as exc:
        raise TaskFileError(f"cannot read solutions {path}: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError, EOFError) as exc:
        raise TaskFileError(f"solutions {path} is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise TaskFileError(f"solutions {path} is a JSON {type(data).__name__}, not an object keyed by task id")
    for task_id, outputs in data.items():
        if not isinstance(outputs, list):
            raise TaskFileError(f"solutions {path}: task {task_id!r} is a {type(outputs).__name__}, "
                                "not a list of output grids")
    return data


def _same_grid(attempt: Any, solution: Any) -> bool:
    a, b = _as_grid_list(attempt), _as_grid_list(solution)
    return a is not None and a == b


def score_submission(
    submission: "str | os.PathLike | Mapping[str, Any]", solutions: "str | os.PathLike | Mapping[str, Any]"
) -> Score:
    """Score against solutions ({task_id: [grid per test input]}). Tasks absent from the submission
    score 0; tasks absent from the solutions are not scored; a malformed entry solves nothing."""
    solutions = load_solutions(solutions)
    if isinstance(submission, (str, os.PathLike)):
        try:
            submission = _read_json(submission)
        except _NotJson as exc:
            raise SubmissionError(str(exc)) from exc
    if not isinstance(submission, Mapping):
        raise SubmissionError(f"submission is a JSON {type(submission).__name__}, not an object keyed by task id")

    tasks: dict[str, TaskScore] = {}
    for task_id, outputs in solutions.items():
        entries = submission.get(task_id)
        entries = entries if isinstance(entries, list) else []
        at_1 = at_2 = 0
        for index, solution in enumerate(outputs):
            entry = entries[index] if index < len(entries) and isinstance(entries[index], Mapping) else {}
            first = _same_grid(entry.get("attempt_1"), solution)
            second = _same_grid(entry.get("attempt_2"), solution)
            at_1 += first
            at_2 += first or second
        tasks[task_id] = TaskScore(task_id, len(outputs), at_1, at_2)

    n = len(tasks)
    return Score(
        pass_at_1=sum(t.pass_at_1 for t in tasks.values()) / n if n else 0.0,
        pass_at_2=sum(t.pass_at_2 for t in tasks.values()) / n if n else 0.0,
        tasks=tasks,
    )
