"""Submission building, atomic writing, validation and scoring, on real ARC tasks."""

from __future__ import annotations

import copy
import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest

from trm_kaggle import submission as sub
from trm_kaggle.errors import SubmissionError
from trm_kaggle.submission import (
    build_submission,
    fallback_attempts,
    score_submission,
    validate_submission,
    write_submission,
)
from trm_kaggle.tasks import load_tasks

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"
KAGGLE_TEST = SAMPLE / "arc-agi_test_challenges.json"  # 240 tasks, 259 test inputs, no solutions


@pytest.fixture(scope="module")
def kaggle_test():
    """Real tasks, some with several test inputs (which the small pair lacks)."""
    return load_tasks(KAGGLE_TEST)


@pytest.fixture(scope="module")
def evaluation():
    """(TaskSet, solutions dict) for 16 real tasks with known answers."""
    solutions = json.loads((SAMPLE / "small_solutions.json").read_text())
    return load_tasks(SAMPLE / "small_challenges.json"), solutions


def _multi_test_task(task_set) -> str:
    return next(t for t in task_set.task_ids if task_set.num_test_inputs(t) > 1)


def _made_up_outputs(task_set, task_id):
    """Stand-in answers for a task without solutions: each test input with every colour shifted by one,
    so each differs from its input and from the fallback."""
    return [(example.input + 1) % 10 for example in task_set.tasks[task_id].test]


def _predictions_from_solutions(solutions):
    return {task_id: [[np.array(grid, dtype=np.uint8)] for grid in grids] for task_id, grids in solutions.items()}


# ---------------------------------------------------------------------------------------------- fallback


def test_fallback_covers_every_test_input_of_the_kaggle_test_set_and_validates(kaggle_test):
    task_set = kaggle_test
    fallback = fallback_attempts(task_set)
    assert len(fallback) == 240
    assert sum(len(entries) for entries in fallback.values()) == 259
    assert validate_submission(fallback, task_set) == []
    assert validate_submission(fallback, KAGGLE_TEST) == []


def test_fallback_echoes_each_test_input_as_attempt_1_and_blank_as_attempt_2(kaggle_test):
    task_set = kaggle_test
    fallback = fallback_attempts(task_set)
    task_id = _multi_test_task(task_set)
    for entry, example in zip(fallback[task_id], task_set.tasks[task_id].test):
        assert entry["attempt_1"] == example.input.tolist()
        assert entry["attempt_2"] == [[0]]


def test_invalid_tasks_still_get_one_fallback_entry_per_keyable_test_input(tmp_path, kaggle_test):
    task_set = kaggle_test
    raw = json.loads(KAGGLE_TEST.read_text())
    good_id = _multi_test_task(task_set)
    bad_colour = copy.deepcopy(raw[good_id])
    bad_colour["test"][1]["input"][0][0] = 12  # second test grid unusable, first still fine
    no_tests = copy.deepcopy(raw[good_id])
    del no_tests["test"]  # number of test inputs unknown
    path = tmp_path / "challenges.json"
    path.write_text(json.dumps({good_id: raw[good_id], "badcolour": bad_colour, "notests": no_tests}))

    task_set = load_tasks(path)
    assert set(task_set.invalid) == {"badcolour", "notests"}
    fallback = fallback_attempts(task_set)

    assert list(fallback) == [good_id, "badcolour", "notests"]
    assert len(fallback["badcolour"]) == 2
    assert fallback["badcolour"][0]["attempt_1"] == raw[good_id]["test"][0]["input"]
    assert fallback["badcolour"][1] == {"attempt_1": [[0]], "attempt_2": [[0]]}
    assert fallback["notests"] == [{"attempt_1": [[0]], "attempt_2": [[0]]}]
    assert validate_submission(fallback, path) == []


# ---------------------------------------------------------------------------------------------- build


def test_submission_built_from_the_solutions_scores_one(evaluation):
    task_set, solutions = evaluation
    built = build_submission(task_set, _predictions_from_solutions(solutions))
    assert validate_submission(built, task_set) == []
    score = score_submission(built, solutions)
    assert score.pass_at_1 == 1.0 and score.pass_at_2 == 1.0
    assert score.num_tasks == len(solutions)


def test_missing_prediction_for_one_test_input_falls_back_for_that_input_only(kaggle_test):
    task_set = kaggle_test
    task_id = _multi_test_task(task_set)
    outputs = _made_up_outputs(task_set, task_id)
    built = build_submission(task_set, {task_id: [[], [outputs[1]]]})  # nothing for test input 0

    entries = built[task_id]
    assert len(entries) == task_set.num_test_inputs(task_id)
    assert entries[0]["attempt_1"] == task_set.tasks[task_id].test[0].input.tolist()
    assert entries[1]["attempt_1"] == outputs[1].tolist()  # not shifted onto input 0


def test_short_prediction_list_still_gives_every_test_input_an_entry(kaggle_test):
    task_set = kaggle_test
    task_id = _multi_test_task(task_set)
    outputs = _made_up_outputs(task_set, task_id)
    built = build_submission(task_set, {task_id: [[outputs[0]]]})
    assert len(built[task_id]) == task_set.num_test_inputs(task_id)
    assert built[task_id][0]["attempt_1"] == outputs[0].tolist()
    assert built[task_id][1]["attempt_1"] == task_set.tasks[task_id].test[1].input.tolist()


def test_a_single_candidate_gets_a_distinct_fallback_as_attempt_2(evaluation):
    task_set, solutions = evaluation
    task_id = task_set.task_ids[0]
    only = np.array(solutions[task_id][0], dtype=np.uint8)
    entry = build_submission(task_set, {task_id: [[only, only.copy()]]})[task_id][0]
    assert entry["attempt_1"] == solutions[task_id][0]
    assert entry["attempt_2"] == task_set.tasks[task_id].test[0].input.tolist()
    assert entry["attempt_2"] != entry["attempt_1"]


def test_an_empty_or_malformed_prediction_is_never_written(evaluation):
    task_set, solutions = evaluation
    task_id = task_set.task_ids[0]
    empty = np.zeros((0, 0), dtype=np.uint8)
    too_big = np.zeros((31, 2), dtype=np.uint8)
    good = np.array(solutions[task_id][0], dtype=np.uint8)
    entry = build_submission(task_set, {task_id: [[empty, None, too_big, [[1, 2], [3]], good]]})[task_id][0]
    assert entry["attempt_1"] == solutions[task_id][0]
    assert validate_submission(build_submission(task_set, {task_id: [[empty]]}), task_set) == []


def test_two_candidates_are_written_in_rank_order(evaluation):
    task_set, solutions = evaluation
    task_id = task_set.task_ids[0]
    good = np.array(solutions[task_id][0], dtype=np.uint8)
    wrong = (good + 1) % 10
    entry = build_submission(task_set, {task_id: [[wrong, good]]})[task_id][0]
    assert entry == {"attempt_1": wrong.tolist(), "attempt_2": good.tolist()}
    score = score_submission({task_id: [entry]}, {task_id: solutions[task_id][:1]})
    assert (score.pass_at_1, score.pass_at_2) == (0.0, 1.0)


# ---------------------------------------------------------------------------------------------- write


def test_written_json_holds_only_plain_ints(tmp_path, evaluation):
    task_set, solutions = evaluation
    path = write_submission(build_submission(task_set, _predictions_from_solutions(solutions)), tmp_path / "s.json")
    text = path.read_text()
    seen = set()

    def record(value):
        seen.add(type(value))
        return value

    json.loads(text, parse_float=lambda s: record(float(s)), parse_int=lambda s: record(int(s)))
    assert seen == {int}
    assert "true" not in text and "false" not in text and "null" not in text


def test_write_failure_keeps_the_previous_file_and_leaves_no_temp_file(tmp_path, evaluation, monkeypatch):
    task_set, _ = evaluation
    path = tmp_path / "submission.json"
    write_submission({"old": []}, path)
    real_fdopen = os.fdopen

    class DiskFull:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, text):
            self.handle.write(text[: len(text) // 2])  # part of it lands, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: DiskFull(real_fdopen(fd, *a, **k)))
    with pytest.raises(SubmissionError, match="No space left"):
        write_submission(fallback_attempts(task_set), path)
    monkeypatch.undo()

    assert json.loads(path.read_text()) == {"old": []}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["submission.json"]


def test_interrupted_write_removes_the_temp_file_and_reraises(tmp_path, monkeypatch):
    path = tmp_path / "submission.json"
    write_submission({"old": []}, path)

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(sub.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_submission({"new": []}, path)
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"old": []}
    assert [p.name for p in tmp_path.iterdir()] == ["submission.json"]


def test_write_replaces_an_existing_file(tmp_path):
    path = tmp_path / "submission.json"
    write_submission({"old": []}, path)
    write_submission({"new": [{"attempt_1": np.ones((1, 2), np.uint8), "attempt_2": [[np.int64(3)]]}]}, path)
    assert json.loads(path.read_text()) == {"new": [{"attempt_1": [[1, 1]], "attempt_2": [[3]]}]}


# ---------------------------------------------------------------------------------------------- validate


def _defects(task_id: str, other_id: str, n_tests: int):
    """(name, mutate(submission), expected fragment of the problem line)."""

    def set_grid(grid, key="attempt_1"):
        def mutate(s):
            s[task_id][0][key] = grid

        return mutate

    def delete(s):
        del s[task_id]

    def extra(s):
        s["ffffffff"] = [{"attempt_1": [[0]], "attempt_2": [[0]]}]

    def drop_entry(s):
        s[other_id].pop()

    def add_entry(s):
        s[task_id].append({"attempt_1": [[0]], "attempt_2": [[0]]})

    def missing_key(s):
        del s[task_id][0]["attempt_2"]

    def entry_not_dict(s):
        s[task_id][0] = [[0]]

    return [
        ("missing task", delete, f"missing task {task_id!r}"),
        ("extra task", extra, "extra task 'ffffffff'"),
        ("too few entries", drop_entry, f"task {other_id!r}: {n_tests - 1} entries, expected {n_tests}"),
        ("too many entries", add_entry, f"task {task_id!r}: 2 entries, expected 1"),
        ("missing attempt", missing_key, f"task {task_id!r} test 0: missing attempt_2"),
        ("entry not an object", entry_not_dict, "entry is a list"),
        ("ragged grid", set_grid([[1, 2], [3]]), "attempt_1: row 1 has 1 cells, row 0 has 2"),
        ("colour 10", set_grid([[1, 10]]), "cell (0,1) is 10, outside 0..9"),
        ("negative colour", set_grid([[-1]], "attempt_2"), "attempt_2: cell (0,0) is -1"),
        ("float cell", set_grid([[1.0]]), "cell (0,0) is 1.0, not an int"),
        ("bool cell", set_grid([[True]]), "cell (0,0) is True, not an int"),
        ("empty grid", set_grid([]), "grid has no rows"),
        ("empty row", set_grid([[]]), "row 0 is empty"),
        ("too tall", set_grid([[0]] * 31), "31 rows, more than 30"),
        ("too wide", set_grid([[0] * 31]), "31 columns, more than 30"),
        ("flat grid", set_grid([1, 2]), "row 0 is a int"),
        ("string grid", set_grid("0"), "grid is a str"),
    ]


def test_validator_names_each_kind_of_defect(kaggle_test):
    task_set = kaggle_test
    task_id = next(t for t in task_set.task_ids if task_set.num_test_inputs(t) == 1)
    other_id = _multi_test_task(task_set)
    good = fallback_attempts(task_set)
    for name, mutate, fragment in _defects(task_id, other_id, task_set.num_test_inputs(other_id)):
        broken = copy.deepcopy(good)
        mutate(broken)
        problems = validate_submission(broken, task_set)
        assert len(problems) == 1 and fragment in problems[0], (name, problems)


def test_validator_reports_a_file_that_is_not_json(tmp_path, evaluation):
    task_set, _ = evaluation
    path = tmp_path / "submission.json"
    path.write_text('{"00576224": [')
    (problem,) = validate_submission(path, task_set)
    assert "is not JSON" in problem
    path.write_text("[1, 2]")
    assert validate_submission(path, task_set) == ["submission is a JSON list, not an object keyed by task id"]


def test_validator_raises_when_the_submission_file_cannot_be_read(tmp_path, evaluation):
    task_set, _ = evaluation
    with pytest.raises(SubmissionError, match="cannot read"):
        validate_submission(tmp_path / "absent.json", task_set)


# ---------------------------------------------------------------------------------------------- score


def test_score_is_the_mean_over_tasks_of_each_tasks_solved_fraction(kaggle_test):
    task_set = kaggle_test
    multi = _multi_test_task(task_set)
    single = next(t for t in task_set.task_ids if task_set.num_test_inputs(t) == 1)
    solutions = {t: [g.tolist() for g in _made_up_outputs(task_set, t)] for t in (multi, single)}
    n = len(solutions[multi])
    wrong = [[0]]
    submission = {
        multi: [{"attempt_1": solutions[multi][0], "attempt_2": wrong}]
        + [{"attempt_1": wrong, "attempt_2": wrong}] * (n - 1),
        single: [{"attempt_1": wrong, "attempt_2": solutions[single][0]}],
    }
    score = score_submission(submission, {multi: solutions[multi], single: solutions[single]})
    assert score.tasks[multi].pass_at_1 == pytest.approx(1 / n)
    assert score.tasks[single].pass_at_2 == 1.0
    assert score.pass_at_1 == pytest.approx((1 / n + 0) / 2)
    assert score.pass_at_2 == pytest.approx((1 / n + 1) / 2)


def test_tasks_missing_from_the_submission_score_zero(evaluation):
    _, solutions = evaluation
    ids = list(solutions)[:4]
    partial = {ids[0]: [{"attempt_1": g, "attempt_2": g} for g in solutions[ids[0]]]}
    score = score_submission(partial, {t: solutions[t] for t in ids})
    assert score.pass_at_2 == pytest.approx(0.25)
    assert score.tasks[ids[1]].solved_at_2 == 0
