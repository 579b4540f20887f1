"""Loading challenge and solution files: what is valid, what is reported, and what never stops a run."""

from __future__ import annotations

import copy
import gzip
import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import KAGGLE_TEST_CHALLENGES, SMALL_CHALLENGES, SMALL_SOLUTIONS
from trm_kaggle.errors import TaskFileError
from trm_kaggle.tasks import Example, InvalidTask, Task, TaskSet, load_tasks, merge_task_sets

LOGGER = "trm_kaggle.tasks"
RAW_SMALL = json.loads(SMALL_CHALLENGES.read_text())
RAW_SOLUTIONS = json.loads(SMALL_SOLUTIONS.read_text())
A, B, C = "00576224", "03560426", "0692e18c"  # three real ARC-AGI-1 evaluation tasks from small_challenges.json


def write_json(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj))
    return path


def messages_about(caplog: pytest.LogCaptureFixture, task_id: str, level: int = logging.INFO) -> list[str]:
    """Messages of the tasks logger at `level` or above that name the task."""
    return [
        r.getMessage() for r in caplog.records
        if r.name == LOGGER and r.levelno >= level and repr(task_id) in r.getMessage()
    ]


@pytest.fixture(scope="module")
def unsolved_small() -> TaskSet:
    """small_challenges.json without its solutions, as the malformed-file cases load it."""
    return load_tasks(SMALL_CHALLENGES)


def real_tasks_plus(task_id: str, task: object) -> dict:
    """Three real tasks with one more (possibly broken) task between them."""
    return {A: RAW_SMALL[A], B: RAW_SMALL[B], task_id: task, C: RAW_SMALL[C]}


# ---------------------------------------------------------------------------------------------------------
# Real files


def test_the_kaggle_placeholder_has_240_valid_tasks_and_259_test_inputs(kaggle_tasks: TaskSet) -> None:
    assert len(kaggle_tasks.task_ids) == 240
    assert len(kaggle_tasks.tasks) == 240 and not kaggle_tasks.invalid
    assert sum(kaggle_tasks.num_test_inputs(t) for t in kaggle_tasks.task_ids) == 259
    assert all(ex.output is None for task in kaggle_tasks.tasks.values() for ex in task.test)


def test_task_ids_keep_file_order(kaggle_tasks: TaskSet) -> None:
    assert kaggle_tasks.task_ids == list(json.loads(KAGGLE_TEST_CHALLENGES.read_text()))


def test_the_small_pair_loads_with_every_solution_and_grids_at_most_12x12(small_tasks: TaskSet) -> None:
    assert len(small_tasks.tasks) == 16 and not small_tasks.invalid
    for task_id, task in small_tasks.tasks.items():
        assert [ex.output.tolist() for ex in task.test] == RAW_SOLUTIONS[task_id]
        for ex in task.train + task.test:
            assert max(ex.input.shape + ex.output.shape) <= 12


def test_grids_are_read_only_uint8_copies_of_the_json(small_tasks: TaskSet) -> None:
    task = small_tasks.tasks[A]
    grid = task.train[0].input
    assert grid.dtype == np.uint8
    assert grid.tolist() == RAW_SMALL[A]["train"][0]["input"]
    with pytest.raises(ValueError):
        grid[0, 0] = 1


def test_gzipped_and_plain_files_give_the_same_tasks(tmp_path: Path, small_tasks: TaskSet) -> None:
    packed = tmp_path / "small.json.gz"
    packed.write_bytes(gzip.compress(SMALL_CHALLENGES.read_bytes()))
    solutions = tmp_path / "solutions.json.gz"
    solutions.write_bytes(gzip.compress(SMALL_SOLUTIONS.read_bytes()))
    assert load_tasks(packed, solutions).tasks == small_tasks.tasks


def test_examples_compare_and_hash_by_content() -> None:
    grid = np.array([[1, 2]], dtype=np.uint8)
    assert Example(grid, None) == Example(grid.copy(), None)
    assert Example(grid, None) != Example(grid, grid)
    assert len({Example(grid, None), Example(grid.copy(), None)}) == 1


# ---------------------------------------------------------------------------------------------------------
# Malformed tasks: one message each, the task kept as invalid, the other tasks intact


def broken(field_path: list, value: object, *, task: str = B) -> dict:
    """A copy of a real task with the item at field_path replaced (or deleted when value is DELETE)."""
    raw = copy.deepcopy(RAW_SMALL[task])
    target = raw
    for key in field_path[:-1]:
        target = target[key]
    if value is DELETE:
        del target[field_path[-1]]
    else:
        target[field_path[-1]] = value
    return raw


DELETE = object()
RAGGED = [[1, 2, 3], [4, 5], [6, 7, 8]]
MALFORMED = {
    "ragged rows": (broken(["train", 1, "output"], RAGGED), "train[1].output", "row 1 has 2 cells"),
    "31x31 grid": (broken(["test", 0, "input"], [[1] * 31] * 31), "test[0].input", "31 rows"),
    "31 columns": (broken(["train", 0, "input"], [[1] * 31] * 3), "train[0].input", "31 columns"),
    "colour 10": (broken(["train", 0, "input"], [[0, 10]]), "train[0].input", "cell (0, 1) is 10"),
    "colour -1": (broken(["train", 0, "output"], [[0], [-1]]), "train[0].output", "cell (1, 0) is -1"),
    "float 2.5": (broken(["test", 0, "input"], [[2.5]]), "test[0].input", "cell (0, 0) is 2.5"),
    "float 2.0": (broken(["test", 0, "input"], [[2.0]]), "test[0].input", "cell (0, 0) is 2.0"),
    "string cell": (broken(["train", 0, "input"], [[1, "2"]]), "train[0].input", "cell (0, 1) is '2'"),
    "boolean cell": (broken(["train", 0, "input"], [[True]]), "train[0].input", "cell (0, 0) is True"),
    "null cell": (broken(["train", 0, "input"], [[None]]), "train[0].input", "cell (0, 0) is None"),
    "missing test": (broken(["test"], DELETE), "test", "missing"),
    "empty test": (broken(["test"], []), "test", "at least one test input"),
    "empty train": (broken(["train"], []), "train", "at least one train pair"),
    "train not a list": (broken(["train"], {"input": [[1]]}), "train", "expected a list"),
    "0x0 grid": (broken(["train", 0, "input"], []), "train[0].input", "0 rows"),
    "rows without cells": (broken(["train", 0, "input"], [[]]), "train[0].input", "0 columns"),
    "grid not a list": (broken(["train", 0, "input"], "[[1]]"), "train[0].input", "got string"),
    "grid an object": (broken(["train", 0, "input"], {"0": [1]}), "train[0].input", "got object"),
    "row not a list": (broken(["train", 0, "input"], [[1], 2]), "train[0].input", "row 1 is integer"),
    "train pair without output": (broken(["train", 1, "output"], DELETE), "train[1].output", "missing"),
    "test pair not an object": (broken(["test", 0], [[1]]), "test[0]", "expected an object"),
    "task is a list": ([RAW_SMALL[B]], "task", "got list"),
    "task is null": (None, "task", "got null"),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_a_malformed_task_gives_one_warning_and_leaves_the_other_tasks_intact(
    case: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, unsolved_small: TaskSet
) -> None:
    task, field, reason = MALFORMED[case]
    path = write_json(tmp_path / "challenges.json", real_tasks_plus("bad", task))
    with caplog.at_level(logging.INFO, logger=LOGGER):
        loaded = load_tasks(path)

    assert loaded.task_ids == [A, B, "bad", C]
    assert {t: loaded.tasks[t] for t in (A, B, C)} == {t: unsolved_small.tasks[t] for t in (A, B, C)}
    invalid = loaded.invalid["bad"]
    assert (invalid.task_id, invalid.field) == ("bad", field)
    assert reason in invalid.reason
    [message] = messages_about(caplog, "bad")
    assert messages_about(caplog, "bad", logging.WARNING) == [message]
    assert field in message and reason in message and "\n" not in message


def test_an_invalid_task_keeps_the_test_inputs_it_could_read_for_fallback_attempts(tmp_path: Path) -> None:
    task = copy.deepcopy(RAW_SMALL[A])
    good = task["test"][0]["input"]
    task["test"].append({"input": [[1, 2], [3]]})
    task["train"][0]["output"] = [[11]]
    loaded = load_tasks(write_json(tmp_path / "c.json", {A: task}))

    invalid = loaded.invalid[A]
    assert invalid.field == "train[0].output" and "1 more problem" in invalid.reason
    assert len(invalid.test_inputs) == 2
    assert invalid.test_inputs[0].tolist() == good and invalid.test_inputs[1] is None
    assert loaded.num_test_inputs(A) == 2


def test_a_task_whose_test_inputs_cannot_be_counted_still_needs_one_submission_entry(tmp_path: Path) -> None:
    loaded = load_tasks(write_json(tmp_path / "c.json", {"x": broken(["test"], DELETE), "y": [1, 2]}))
    assert loaded.invalid["x"].test_inputs == () and loaded.invalid["y"].test_inputs == ()
    assert loaded.num_test_inputs("x") == loaded.num_test_inputs("y") == 1
    with pytest.raises(KeyError):
        loaded.num_test_inputs("not there")


def test_every_problem_of_a_task_is_counted_in_its_one_message(tmp_path: Path, caplog) -> None:
    task = broken(["train", 0, "input"], [[10]])
    task["test"][0]["input"] = [[-1]]
    with caplog.at_level(logging.INFO, logger=LOGGER):
        load_tasks(write_json(tmp_path / "c.json", {"two": task}))
    [message] = messages_about(caplog, "two")
    assert "train[0].input" in message and "(and 1 more problem)" in message


# ---------------------------------------------------------------------------------------------------------
# Odd but valid input


def test_more_than_three_test_inputs_are_kept_and_logged_once(tmp_path: Path, caplog) -> None:
    task = copy.deepcopy(RAW_SMALL[A])
    task["test"] = task["test"] * 5
    with caplog.at_level(logging.INFO, logger=LOGGER):
        loaded = load_tasks(write_json(tmp_path / "c.json", real_tasks_plus("many", task)))
    assert loaded.num_test_inputs("many") == 5 and "many" in loaded.tasks
    [message] = messages_about(caplog, "many")
    assert "5 test inputs" in message


@pytest.mark.parametrize("task_id", ["tâche-✓", "задача", "🧩", "line\nbreak", "\ud800lone surrogate", ""])
def test_unicode_task_ids_load_like_any_other(tmp_path: Path, task_id: str) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({task_id: RAW_SMALL[A]}))  # ensure_ascii: valid JSON even for a lone surrogate
    loaded = load_tasks(path)
    assert loaded.task_ids == [task_id] and task_id in loaded.tasks


def test_a_test_output_inside_the_challenges_file_is_used_when_valid(tmp_path: Path) -> None:
    task = copy.deepcopy(RAW_SMALL[A])
    task["test"][0]["output"] = RAW_SOLUTIONS[A][0]
    loaded = load_tasks(write_json(tmp_path / "c.json", {A: task}))
    assert loaded.tasks[A].test[0].output.tolist() == RAW_SOLUTIONS[A][0]


def test_a_malformed_test_output_inside_the_challenges_file_is_dropped_with_one_warning(tmp_path, caplog) -> None:
    task = copy.deepcopy(RAW_SMALL[A])
    task["test"][0]["output"] = [[12]]
    with caplog.at_level(logging.INFO, logger=LOGGER):
        loaded = load_tasks(write_json(tmp_path / "c.json", {A: task}))
    assert loaded.tasks[A].test[0].output is None
    assert len(messages_about(caplog, A)) == 1


def test_extra_keys_in_a_task_are_ignored(tmp_path: Path, small_tasks: TaskSet) -> None:
    task = dict(RAW_SMALL[A], name="a note", version=2)
    loaded = load_tasks(write_json(tmp_path / "c.json", {A: task}), SMALL_SOLUTIONS)
    assert loaded.tasks[A] == small_tasks.tasks[A]


def test_an_empty_file_object_gives_an_empty_task_set(tmp_path: Path) -> None:
    loaded = load_tasks(write_json(tmp_path / "c.json", {}))
    assert loaded.task_ids == [] and loaded.tasks == {} and loaded.invalid == {}


# ---------------------------------------------------------------------------------------------------------
# Duplicates


def test_a_task_id_repeated_in_one_file_keeps_the_first_with_one_warning(tmp_path: Path, caplog) -> None:
    text = "{" + ", ".join(
        f'"{k}": {json.dumps(v)}' for k, v in [(A, RAW_SMALL[A]), (B, RAW_SMALL[B]), (A, RAW_SMALL[C])]
    ) + "}"
    path = tmp_path / "c.json"
    path.write_text(text)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        loaded = load_tasks(path)
    assert loaded.task_ids == [A, B]
    assert loaded.tasks[A].train[0].input.tolist() == RAW_SMALL[A]["train"][0]["input"]
    [message] = messages_about(caplog, A)
    assert "more than once" in message


def test_a_task_id_repeated_in_the_solutions_keeps_the_first_with_one_warning(tmp_path: Path, caplog) -> None:
    path = tmp_path / "s.json"
    path.write_text(f'{{"{A}": {json.dumps(RAW_SOLUTIONS[A])}, "{A}": [[[1]]]}}')
    with caplog.at_level(logging.INFO, logger=LOGGER):
        loaded = load_tasks(SMALL_CHALLENGES, path)
    assert loaded.tasks[A].test[0].output.tolist() == RAW_SOLUTIONS[A][0]
    assert [m for m in messages_about(caplog, A) if "more than once" in m and "s.json" in m]


def test_a_key_repeated_inside_a_task_makes_it_invalid(tmp_path: Path, caplog) -> None:
    pair = '{"input": [[1]], "output": [[2]], "input": [[3]]}'
    path = tmp_path / "c.json"
    dup = f'{{"train": [{pair}], "test": [{{"input": [[1]]}}]}}'
    path.write_text(f'{{"dup": {dup}, "{A}": {json.dumps(RAW_SMALL[A])}}}')
    with caplog.at_level(logging.INFO, logger=LOGGER):
        loaded = load_tasks(path)
    assert loaded.invalid["dup"].field == "train[0]"
    assert "'input' appears more than once" in loaded.invalid["dup"].reason
    assert A in loaded.tasks
    assert len(messages_about(caplog, "dup")) == 1


def test_merging_files_keeps_the_first_of_a_repeated_id_and_warns_once_per_id(tmp_path: Path, caplog) -> None:
    first = load_tasks(write_json(tmp_path / "one.json", {A: RAW_SMALL[A], B: RAW_SMALL[B]}))
    second = load_tasks(write_json(tmp_path / "two.json", {B: RAW_SMALL[C], C: RAW_SMALL[C], "bad": []}))
    third = load_tasks(write_json(tmp_path / "three.json", {B: RAW_SMALL[A]}))
    with caplog.at_level(logging.INFO, logger=LOGGER):
        merged = merge_task_sets(first, second, third)

    assert merged.task_ids == [A, B, C, "bad"]
    assert merged.tasks[B] is first.tasks[B]
    assert merged.invalid["bad"] is second.invalid["bad"]
    [message] = messages_about(caplog, B)
    assert "one.json" in message and "two.json" in message and "three.json" in message
    assert "one.json" in merged.source and "three.json" in merged.source


# ---------------------------------------------------------------------------------------------------------
# Solutions


def test_a_task_missing_from_the_solutions_stays_valid_with_unknown_outputs(tmp_path: Path, caplog) -> None:
    solutions = write_json(tmp_path / "s.json", {A: RAW_SOLUTIONS[A], "unknown task": [[[1]]]})
    with caplog.at_level(logging.INFO, logger=LOGGER):
        loaded = load_tasks(write_json(tmp_path / "c.json", {A: RAW_SMALL[A], B: RAW_SMALL[B]}), solutions)
    assert loaded.tasks[A].test[0].output.tolist() == RAW_SOLUTIONS[A][0]
    assert loaded.tasks[B].test[0].output is None
    [message] = messages_about(caplog, B)
    assert "no entry" in message
    assert messages_about(caplog, A) == [] and messages_about(caplog, "unknown task") == []


@pytest.mark.parametrize(
    "entry, reason",
    [
        ([[[1, 2], [3]]], "solutions[0]"),
        ([[[1]], [[2]]], "2 output grid(s) for 1 test input"),
        ([], "0 output grid(s)"),
        ({"output": [[1]]}, "got object"),
        ([[[10]]], "cell (0, 0) is 10"),
    ],
)
def test_a_malformed_solution_entry_leaves_outputs_unknown_with_one_warning(
    entry: object, reason: str, tmp_path: Path, caplog
) -> None:
    solutions = write_json(tmp_path / "s.json", {A: RAW_SOLUTIONS[A], B: entry})
    with caplog.at_level(logging.INFO, logger=LOGGER):
        loaded = load_tasks(write_json(tmp_path / "c.json", {A: RAW_SMALL[A], B: RAW_SMALL[B]}), solutions)
    assert B in loaded.tasks and loaded.tasks[B].test[0].output is None
    assert loaded.tasks[A].test[0].output is not None
    [message] = messages_about(caplog, B)
    assert reason in message and "s.json" in message


# ---------------------------------------------------------------------------------------------------------
# Unreadable files: TaskFileError, one line, naming the file


UNREADABLE = {
    "missing file": None,
    "not JSON": b"this is not json",
    "truncated JSON": SMALL_CHALLENGES.read_bytes()[:5000],
    "empty file": b"",
    "top-level list": json.dumps([RAW_SMALL[A]]).encode(),
    "top-level string": b'"00576224"',
    "broken gzip": gzip.compress(SMALL_CHALLENGES.read_bytes())[:300],
    "not UTF-8": b'{"\xff\xfe": 1}',
    "nested too deep": b"[" * 100_000,
}


@pytest.mark.parametrize("case", UNREADABLE, ids=list(UNREADABLE))
@pytest.mark.parametrize("role", ["challenges", "solutions"])
def test_an_unreadable_file_raises_task_file_error_naming_the_file(case: str, role: str, tmp_path: Path) -> None:
    bad = tmp_path / "weird-name.json"
    if UNREADABLE[case] is not None:
        bad.write_bytes(UNREADABLE[case])
    args = (bad,) if role == "challenges" else (SMALL_CHALLENGES, bad)
    with pytest.raises(TaskFileError) as info:
        load_tasks(*args)
    message = str(info.value)
    assert "weird-name.json" in message and role in message and "\n" not in message


def test_a_directory_is_not_a_challenges_file(tmp_path: Path) -> None:
    with pytest.raises(TaskFileError, match="directory"):
        load_tasks(tmp_path)


# ---------------------------------------------------------------------------------------------------------
# Scale and fuzzing


def test_a_thousand_tasks_load_in_a_few_seconds(tmp_path: Path) -> None:
    raw = json.loads(KAGGLE_TEST_CHALLENGES.read_text())
    ids = list(raw)
    many = {f"{i:04d}-{ids[i % len(ids)]}": raw[ids[i % len(ids)]] for i in range(1000)}
    many["0001-bad"] = {"train": []}
    path = write_json(tmp_path / "many.json", many)
    start = time.perf_counter()
    loaded = load_tasks(path)
    elapsed = time.perf_counter() - start
    assert len(loaded.task_ids) == 1001 and len(loaded.tasks) == 1000
    assert elapsed < 5.0, f"loading 1,000 tasks took {elapsed:.2f} s"


json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 12), st.floats(allow_nan=False), st.text(max_size=3)
)
json_like = st.recursive(
    json_leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=30,
)


def rectangular(cells: st.SearchStrategy) -> st.SearchStrategy:
    row = st.integers(1, 4).map(lambda w: st.lists(cells, min_size=w, max_size=w))
    return row.flatmap(lambda r: st.lists(r, min_size=1, max_size=4))


def task_of(grid: st.SearchStrategy, pair_extra: st.SearchStrategy) -> st.SearchStrategy:
    pair = st.fixed_dictionaries({"input": grid, "output": grid}) | pair_extra
    return st.fixed_dictionaries({"train": st.lists(pair, min_size=1, max_size=3), "test": st.lists(pair, max_size=4)})


# Three kinds of task, so every branch of the checks is reached: valid ones, near misses, arbitrary JSON.
good_grid = rectangular(st.integers(0, 9))
near_grid = st.one_of(good_grid, rectangular(st.integers(-1, 10) | json_leaf), st.lists(st.lists(json_leaf)), json_like)
near_pair = st.fixed_dictionaries({}, optional={"input": near_grid, "output": near_grid}) | json_like
any_task = st.one_of(task_of(good_grid, st.nothing()), task_of(near_grid, near_pair), json_like)


def check_loaded(loaded: TaskSet, expected_ids: list[str]) -> None:
    assert loaded.task_ids == expected_ids
    for task_id in expected_ids:
        assert (task_id in loaded.tasks) != (task_id in loaded.invalid)
        if task_id in loaded.tasks:
            task = loaded.tasks[task_id]
            assert isinstance(task, Task) and task.train and task.test
            for ex in task.train + task.test:
                for grid in (ex.input, ex.output):
                    if grid is not None:
                        assert grid.dtype == np.uint8 and grid.ndim == 2 and 1 <= min(grid.shape)
                        assert max(grid.shape) <= 30 and grid.max() <= 9
        else:
            assert isinstance(loaded.invalid[task_id], InvalidTask)
        assert loaded.num_test_inputs(task_id) >= 1


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tasks=st.dictionaries(st.text(max_size=5), any_task, max_size=5), solutions=st.none() | json_like)
def test_the_loader_never_raises_for_any_json_and_sorts_every_task_into_valid_or_invalid(
    tasks: dict, solutions: object, tmp_path_factory: pytest.TempPathFactory
) -> None:
    folder = tmp_path_factory.mktemp("fuzz")
    path = write_json(folder / "c.json", tasks)
    solutions_path = None if solutions is None else write_json(folder / "s.json", solutions)
    try:
        loaded = load_tasks(path, solutions_path)
    except TaskFileError:
        assert not isinstance(solutions, dict)  # the only unreadable file here is a non-object solutions file
        return
    check_loaded(loaded, list(tasks))


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=200) | json_like.map(lambda v: json.dumps(v).encode()))
def test_any_bytes_either_load_or_raise_task_file_error(data: bytes, tmp_path_factory) -> None:
    path = tmp_path_factory.mktemp("bytes") / "c.json"
    path.write_bytes(data)
    try:
        loaded = load_tasks(path)
    except TaskFileError as e:
        assert "\n" not in str(e)
        return
    check_loaded(loaded, loaded.task_ids)
