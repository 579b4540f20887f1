"""Load Kaggle ARC challenge files (and, when there are any, their solutions) into validated tasks.

    from trm_kaggle.tasks import load_tasks
    tasks = load_tasks("sample_data/small_challenges.json", "sample_data/small_solutions.json")
    tasks.tasks["00576224"].test[0].output      # uint8 grid, or None when no solution is known

A file that cannot be read at all raises TaskFileError. A malformed task never stops the load: it is logged
once (id, field, reason) and kept as an InvalidTask, so that the submission still gives it fallback attempts.
Files may be plain `.json` or gzip-compressed (recognised by their first bytes, not by their name).
"""

from __future__ import annotations

import gzip
import json
import logging
import time
import zlib
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from .errors import TaskFileError, TaskValidationError

log = logging.getLogger("trm_kaggle.tasks")

Grid = np.ndarray  # uint8, shape [h, w], 1 <= h, w <= 30, values 0..9

MAX_GRID_SIDE = 30
# ARC tasks have 1 to 3 test inputs. More is allowed (each gets predictions), but it is unusual enough to log.
USUAL_MAX_TEST_INPUTS = 3

_COLOURS = frozenset(range(10))
_GZIP_MAGIC = b"\x1f\x8b"


def _same_grid(a: Grid | None, b: Grid | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.shape == b.shape and np.array_equal(a, b)


def _grid_key(grid: Grid | None) -> tuple | None:
    return None if grid is None else (grid.shape, grid.tobytes())


@dataclass(frozen=True)
class Example:
    """One input/output pair. `output` is None for a test input whose answer is unknown.

    Equality and hashing are by content, so examples can be compared and put in sets.
    Grids loaded by `load_tasks` are read-only: a task is shared by every stage and must not change under them.
    """

    input: Grid
    output: Grid | None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Example):
            return NotImplemented
        return _same_grid(self.input, other.input) and _same_grid(self.output, other.output)

    def __hash__(self) -> int:
        return hash((_grid_key(self.input), _grid_key(self.output)))


@dataclass(frozen=True)
class Task:
    task_id: str
    train: tuple[Example, ...]
    test: tuple[Example, ...]


@dataclass(frozen=True, eq=False)  # identity equality: test_inputs holds arrays, which have no plain ==
class InvalidTask:
    """A task that failed validation. It gets fallback attempts only.

    test_inputs: one entry per test input that could be keyed (None where that grid itself is bad); empty when
    the number of test inputs cannot be determined (then the submission gives one fallback entry).
    """

    task_id: str
    field: str
    reason: str
    test_inputs: tuple[Grid | None, ...]


@dataclass
class TaskSet:
    """The tasks of one challenges file (or several, merged).

    task_ids: every id in file order, valid and invalid; tasks: the valid ones; invalid: the others.
    """

    source: str
    task_ids: list[str]
    tasks: dict[str, Task]
    invalid: dict[str, InvalidTask]

    def num_test_inputs(self, task_id: str) -> int:
        """How many entries the submission needs for this task (at least one, even for a hopeless task)."""
        if task_id in self.tasks:
            return len(self.tasks[task_id].test)
        if task_id in self.invalid:
            return max(1, len(self.invalid[task_id].test_inputs))
        raise KeyError(f"task {task_id!r} is not in {self.source}")


# ---------------------------------------------------------------------------------------------------------
# Reading a file


class _ObjectWithDuplicates(dict):
    """A JSON object that had repeated keys; the first value of each is kept, as merge_task_sets does."""

    duplicate_keys: tuple[str, ...] = ()


def _object_pairs(pairs: list[tuple[str, Any]]) -> dict:
    obj = dict(pairs)
    if len(obj) == len(pairs):  # the common case: no repeated key, nothing more to do
        return obj
    obj = _ObjectWithDuplicates()
    duplicates = []
    for key, value in pairs:
        if key in obj:
            if key not in duplicates:
                duplicates.append(key)
        else:
            obj[key] = value
    obj.duplicate_keys = tuple(duplicates)
    return obj


def _duplicate_keys(obj: dict) -> tuple[str, ...]:
    return getattr(obj, "duplicate_keys", ())


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _read_json_object(path: str | Path, role: str) -> dict:
    """The top-level JSON object of a challenges/solutions file, or TaskFileError naming the file."""
    try:
        data = Path(path).read_bytes()
        if data[:2] == _GZIP_MAGIC:
            data = gzip.decompress(data)
        obj = json.loads(data, object_pairs_hook=_object_pairs)
    except FileNotFoundError:
        raise TaskFileError(f"{role} file {path} does not exist") from None
    except IsADirectoryError:
        raise TaskFileError(f"{role} file {path} is a directory, not a JSON file") from None
    except (OSError, EOFError, zlib.error) as e:  # unreadable, or a broken gzip stream
        raise TaskFileError(f"cannot read {role} file {path}: {_one_line(e)}") from None
    except UnicodeDecodeError as e:
        raise TaskFileError(f"{role} file {path} is not UTF-8 text: {_one_line(e)}") from None
    except json.JSONDecodeError as e:
        raise TaskFileError(f"{role} file {path} is not valid JSON (truncated?): {_one_line(e)}") from None
    except RecursionError:
        raise TaskFileError(f"{role} file {path} is nested too deeply to be an ARC file") from None
    if not isinstance(obj, dict):
        raise TaskFileError(
            f"{role} file {path} holds a JSON {_kind(obj)} at the top level;"
            " expected an object mapping task ids to tasks"
        )
    return obj


def _kind(value: Any) -> str:
    """The JSON name of a parsed value's type (bool before int: True is an int to Python)."""
    if value is None:
        return "null"
    for kind, name in ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"), (list, "list")):
        if isinstance(value, kind):
            return name
    return "object" if isinstance(value, dict) else type(value).__name__


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 24 else text[:21] + "..."


# ---------------------------------------------------------------------------------------------------------
# Validating one task


def _parse_grid(value: Any, task_id: str, field: str) -> Grid:
    def bad(reason: str) -> TaskValidationError:
        return TaskValidationError(task_id, field, reason)

    if type(value) is not list:
        raise bad(f"expected a grid (list of rows), got {_kind(value)}")
    h = len(value)
    if not 1 <= h <= MAX_GRID_SIDE:
        raise bad(f"has {h} rows; a grid has 1 to {MAX_GRID_SIDE}")
    for r, row in enumerate(value):
        if type(row) is not list:
            raise bad(f"row {r} is {_kind(row)}, not a list of cells")
    w = len(value[0])
    if not 1 <= w <= MAX_GRID_SIDE:
        raise bad(f"has {w} columns; a grid has 1 to {MAX_GRID_SIDE}")
    for r, row in enumerate(value):
        if len(row) != w:
            raise bad(f"row {r} has {len(row)} cells but row 0 has {w}; a grid must be rectangular")
    cells = list(chain.from_iterable(value))
    # Fast path over the whole grid at C speed; `type(...) is int` rejects bools, which == 0/1 would let in.
    if set(map(type, cells)) != {int} or not _COLOURS.issuperset(cells):
        for i, v in enumerate(cells):
            if type(v) is not int or v not in _COLOURS:
                raise bad(f"cell ({i // w}, {i % w}) is {_short(v)}; colours are integers 0 to 9")
    grid = np.array(value, dtype=np.uint8)
    grid.flags.writeable = False
    return grid


class _TaskChecker:
    """Collects every problem of one task, so the first can be reported and the rest counted."""

    def __init__(self, task_id: str):
        self.task_id = task_id
        self.problems: list[TaskValidationError] = []

    def problem(self, field: str, reason: str) -> None:
        self.problems.append(TaskValidationError(self.task_id, field, reason))

    def no_duplicates(self, obj: dict, field: str) -> None:
        for key in _duplicate_keys(obj):
            self.problem(field, f"key {key!r} appears more than once, so its value is ambiguous")

    def grid(self, pair: dict, key: str, field: str) -> Grid | None:
        if key not in pair:
            self.problem(f"{field}.{key}", "missing")
            return None
        try:
            return _parse_grid(pair[key], self.task_id, f"{field}.{key}")
        except TaskValidationError as e:
            self.problems.append(e)
            return None

    def pairs(self, task: dict, key: str) -> list[dict | None] | None:
        """The entries of task[key] (None for one that is not an object); None if the list itself is bad."""
        if key not in task:
            self.problem(key, "missing")
            return None
        value = task[key]
        if type(value) is not list:
            self.problem(key, f"expected a list of pairs, got {_kind(value)}")
            return None
        if not value:
            needed = "train pair" if key == "train" else "test input"
            self.problem(key, f"is empty; a task needs at least one {needed}")
        entries: list[dict | None] = []
        for i, pair in enumerate(value):
            if isinstance(pair, dict):
                self.no_duplicates(pair, f"{key}[{i}]")
                entries.append(pair)
            else:
                self.problem(f"{key}[{i}]", f"expected an object with 'input', got {_kind(pair)}")
                entries.append(None)
        return entries


def _parse_task(task_id: str, raw: Any) -> tuple[Task | InvalidTask, list[str]]:
    """The task, or an InvalidTask carrying its first problem; plus notes on test outputs that were dropped."""
    check = _TaskChecker(task_id)
    if not isinstance(raw, dict):
        check.problem("task", f"expected an object with 'train' and 'test', got {_kind(raw)}")
        return _invalid(check, ()), []
    check.no_duplicates(raw, "task")

    train: list[Example] = []
    for i, pair in enumerate(check.pairs(raw, "train") or []):
        if pair is not None:
            inp, out = check.grid(pair, "input", f"train[{i}]"), check.grid(pair, "output", f"train[{i}]")
            if inp is not None and out is not None:
                train.append(Example(inp, out))

    test_entries = check.pairs(raw, "test")
    test_inputs: list[Grid | None] = []
    test_outputs: list[Grid | None] = []
    dropped: list[str] = []
    for i, pair in enumerate(test_entries or []):
        inp = None if pair is None else check.grid(pair, "input", f"test[{i}]")
        out = None
        # Kaggle's challenges carry no test outputs, but other ARC files do; a bad one is dropped, not fatal.
        if pair is not None and pair.get("output") is not None:
            try:
                out = _parse_grid(pair["output"], task_id, f"test[{i}].output")
            except TaskValidationError as e:
                dropped.append(f"{e.field}: {e.reason}")
        test_inputs.append(inp)
        test_outputs.append(out)

    if check.problems:
        return _invalid(check, () if test_entries is None else tuple(test_inputs)), []
    test = tuple(Example(inp, out) for inp, out in zip(test_inputs, test_outputs))
    return Task(task_id, tuple(train), test), dropped


def _invalid(check: _TaskChecker, test_inputs: tuple[Grid | None, ...]) -> InvalidTask:
    first = check.problems[0]
    more = len(check.problems) - 1
    reason = first.reason + (f" (and {more} more problem{'s' * (more > 1)})" if more else "")
    return InvalidTask(check.task_id, first.field, reason, test_inputs)


# ---------------------------------------------------------------------------------------------------------
# Solutions


def _with_solutions(task: Task, entry: Any, source: str) -> Task:
    """The task with test outputs from its solutions entry; on any problem, outputs None and one warning."""
    n = len(task.test)
    problem = None
    if entry is None:
        problem = "no entry"
    elif type(entry) is not list:
        problem = f"expected a list of {n} output grid(s), got {_kind(entry)}"
    elif len(entry) != n:
        problem = f"has {len(entry)} output grid(s) for {n} test input(s)"
    else:
        try:
            outputs = [_parse_grid(g, task.task_id, f"solutions[{i}]") for i, g in enumerate(entry)]
        except TaskValidationError as e:
            problem = f"{e.field}: {e.reason}"
    if problem is not None:
        log.warning("task %r: solutions file %s: %s; its test outputs are unknown", task.task_id, source, problem)
        outputs = [None] * n
    test = tuple(Example(ex.input, out) for ex, out in zip(task.test, outputs))
    return Task(task.task_id, task.train, test)


# ---------------------------------------------------------------------------------------------------------
# Public entry points


def load_tasks(challenges: str | Path, solutions: str | Path | None = None) -> TaskSet:
    """Read a challenges file (and optionally its solutions file); `.json` or `.json.gz`.

    Raises TaskFileError if a file cannot be read, is not JSON, or is not an object. Never raises for a bad task:
    it is logged once (warning) and kept in `invalid`. Repeated task ids in one file keep the first (warning).
    """
    start = time.perf_counter()
    raw = _read_json_object(challenges, "challenges")
    raw_solutions = None if solutions is None else _read_json_object(solutions, "solutions")
    source = str(challenges)

    for data, path in ((raw, challenges), (raw_solutions, solutions)):
        for task_id in _duplicate_keys(data or {}):
            log.warning("task %r appears more than once in %s; the first one is kept", task_id, path)

    task_set = TaskSet(source=source, task_ids=list(raw), tasks={}, invalid={})
    for task_id, raw_task in raw.items():
        task, dropped = _parse_task(task_id, raw_task)
        if isinstance(task, InvalidTask):
            log.warning(
                "task %r is invalid and gets fallback attempts only: %s: %s", task_id, task.field, task.reason
            )
            task_set.invalid[task_id] = task
            continue
        if raw_solutions is not None:
            task = _with_solutions(task, raw_solutions.get(task_id), str(solutions))
        elif dropped:
            log.warning("task %r: ignoring a malformed test output: %s", task_id, "; ".join(dropped))
        if len(task.test) > USUAL_MAX_TEST_INPUTS:
            log.info(
                "task %r has %d test inputs (ARC tasks have at most %d); each gets predictions",
                task_id, len(task.test), USUAL_MAX_TEST_INPUTS,
            )
        task_set.tasks[task_id] = task

    log.info(
        "loaded %d tasks (%d invalid) from %s in %.2f s",
        len(task_set.task_ids), len(task_set.invalid), source, time.perf_counter() - start,
    )
    return task_set


def merge_task_sets(*sets: TaskSet) -> TaskSet:
    """One TaskSet from several, in order. An id seen before is dropped (first kept), with one warning per id."""
    merged = TaskSet(source=" + ".join(s.source for s in sets), task_ids=[], tasks={}, invalid={})
    first_source: dict[str, str] = {}
    dropped_from: dict[str, list[str]] = {}
    for task_set in sets:
        for task_id in task_set.task_ids:
            if task_id in first_source:
                dropped_from.setdefault(task_id, []).append(task_set.source)
                continue
            first_source[task_id] = task_set.source
            merged.task_ids.append(task_id)
            if task_id in task_set.tasks:
                merged.tasks[task_id] = task_set.tasks[task_id]
            else:
                merged.invalid[task_id] = task_set.invalid[task_id]
    for task_id, sources in dropped_from.items():
        log.warning(
            "task %r appears in %s and again in %s; the first is kept",
            task_id, first_source[task_id], ", ".join(sources),
        )
    return merged
