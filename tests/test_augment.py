"""Augmentations: upstream's dihedral ids, colour maps, canvas translations, content hashes, and task variants."""

from __future__ import annotations

import hashlib
import itertools
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from trm_kaggle.augment import (
    DIHEDRAL_INVERSE,
    Augmentation,
    Translation,
    build_variant_index,
    dihedral_transform,
    grid_hash,
    inverse_dihedral_transform,
    random_translation,
    task_content_hash,
    task_variants,
)
from trm_kaggle.encoding import GRID_SIZE, encode_grid, encode_grids
from trm_kaggle.tasks import Example, Task, TaskSet

REPO_ROOT = Path(__file__).resolve().parent.parent
grids = arrays(np.uint8, st.tuples(st.integers(1, 30), st.integers(1, 30)), elements=st.integers(0, 9))
colour_maps = st.permutations(range(1, 10)).map(lambda p: (0, *p))
augmentations = st.builds(Augmentation, st.integers(0, 7), colour_maps)


def g(rows: list[list[int]]) -> np.ndarray:
    return np.array(rows, dtype=np.uint8)


# ---------------------------------------------------------------------------------------------------------
# Dihedral transforms and colour maps


UPSTREAM_2X3 = {  # TRM_FACTS §2.1, checked by running upstream's code on [[0, 1, 2], [3, 4, 5]]
    0: [[0, 1, 2], [3, 4, 5]],
    1: [[2, 5], [1, 4], [0, 3]],
    2: [[5, 4, 3], [2, 1, 0]],
    3: [[3, 0], [4, 1], [5, 2]],
    4: [[2, 1, 0], [5, 4, 3]],
    5: [[3, 4, 5], [0, 1, 2]],
    6: [[0, 3], [1, 4], [2, 5]],
    7: [[5, 2], [4, 1], [3, 0]],
}


@pytest.mark.parametrize("tid", range(8))
def test_dihedral_ids_give_upstreams_table_on_a_2x3_grid_and_invert_back(tid: int) -> None:
    original = g([[0, 1, 2], [3, 4, 5]])
    transformed = dihedral_transform(original, tid)
    assert transformed.tolist() == UPSTREAM_2X3[tid]
    np.testing.assert_array_equal(inverse_dihedral_transform(transformed, tid), original)
    np.testing.assert_array_equal(dihedral_transform(transformed, DIHEDRAL_INVERSE[tid]), original)


def test_a_dihedral_id_outside_0_to_7_leaves_the_grid_alone_as_upstream_does() -> None:
    grid = g([[1, 2]])
    assert dihedral_transform(grid, 8).tolist() == [[1, 2]]
    assert inverse_dihedral_transform(grid, -1).tolist() == [[1, 2]]


def test_transforms_return_new_c_ordered_arrays() -> None:
    grid = g([[1, 2], [3, 4]])
    for tid in range(8):
        out = dihedral_transform(grid, tid)
        assert out.flags.c_contiguous and not np.shares_memory(out, grid)


def test_a_colour_map_recolours_and_black_stays_black() -> None:
    aug = Augmentation(0, (0, 2, 3, 4, 5, 6, 7, 8, 9, 1))
    assert aug.apply(g([[0, 1, 9]])).tolist() == [[0, 2, 1]]


def test_apply_is_the_colour_map_then_the_dihedral_and_invert_undoes_both(small_tasks: TaskSet) -> None:
    grid = small_tasks.tasks["0692e18c"].train[0].input
    aug = Augmentation(3, (0, 6, 1, 4, 7, 3, 2, 9, 5, 8))
    expected = dihedral_transform(np.array(aug.colour_map, dtype=np.uint8)[grid], 3)
    np.testing.assert_array_equal(aug.apply(grid), expected)
    np.testing.assert_array_equal(aug.invert(expected), grid)


@pytest.mark.parametrize(
    "dihedral, colour_map",
    [
        (8, tuple(range(10))),
        (-1, tuple(range(10))),
        (0, (1, 0, 2, 3, 4, 5, 6, 7, 8, 9)),
        (0, (0, 1, 1, 3, 4, 5, 6, 7, 8, 9)),
        (0, tuple(range(9))),
    ],
    ids=["dihedral 8", "dihedral -1", "black moved", "not a permutation", "nine colours"],
)
def test_an_impossible_plan_is_refused(dihedral: int, colour_map: tuple) -> None:
    with pytest.raises(ValueError):
        Augmentation(dihedral, colour_map)


def test_plans_from_numpy_values_equal_plans_from_ints() -> None:
    from_numpy = Augmentation(np.int64(3), np.array([0, 2, 1, 3, 4, 5, 6, 7, 8, 9]))
    assert from_numpy == Augmentation(3, (0, 2, 1, 3, 4, 5, 6, 7, 8, 9))
    assert hash(from_numpy) == hash(Augmentation(3, (0, 2, 1, 3, 4, 5, 6, 7, 8, 9)))


def test_names_follow_upstream_and_the_identity_keeps_the_bare_id() -> None:
    assert Augmentation().is_identity and Augmentation().name("bbb") == "bbb"
    aug = Augmentation(3, (0, 6, 1, 4, 7, 3, 2, 9, 5, 8))
    assert not aug.is_identity and aug.name("bbb") == "bbb|||t3|||0614732958"
    assert not Augmentation(1).is_identity


def test_augmenting_a_task_changes_every_grid_and_keeps_unknown_outputs_unknown(kaggle_tasks: TaskSet) -> None:
    task = kaggle_tasks.tasks["00576224"]
    aug = Augmentation(1, (0, 9, 8, 7, 6, 5, 4, 3, 2, 1))
    out = aug.apply_task(task)
    assert out.task_id == task.task_id and len(out.train) == len(task.train) and len(out.test) == len(task.test)
    for before, after in zip(task.train + task.test, out.train + out.test):
        np.testing.assert_array_equal(after.input, aug.apply(before.input))
        assert (after.output is None) == (before.output is None)
    assert Augmentation().apply_task(task) == task


@settings(max_examples=200, deadline=None)
@given(grid=grids, aug=augmentations)
def test_invert_undoes_apply_for_every_dihedral_and_colour_map(grid: np.ndarray, aug: Augmentation) -> None:
    out = aug.apply(grid)
    assert out.dtype == np.uint8 and sorted(out.shape) == sorted(grid.shape)
    np.testing.assert_array_equal(aug.invert(out), grid)
    assert (out == 0).sum() == (grid == 0).sum()


def test_every_real_grid_survives_every_dihedral_with_a_random_colour_map(every_real_grid) -> None:
    rng = np.random.default_rng(0)
    for where, grid in every_real_grid:
        colour_map = (0, *(rng.permutation(9) + 1).tolist())
        for tid in range(8):
            aug = Augmentation(tid, colour_map)
            assert np.array_equal(aug.invert(aug.apply(grid)), grid), f"{where} t{tid} {colour_map}"


# ---------------------------------------------------------------------------------------------------------
# Translations


@st.composite
def grids_and_fitting_translations(draw) -> tuple[np.ndarray, Translation]:
    grid = draw(grids)
    h, w = grid.shape
    return grid, Translation(draw(st.integers(0, GRID_SIZE - h)), draw(st.integers(0, GRID_SIZE - w)))


@settings(max_examples=200, deadline=None)
@given(case=grids_and_fitting_translations())
def test_a_translation_equals_encoding_at_its_offset_and_inverts_back(case) -> None:
    grid, move = case
    at_origin = encode_grid(grid)
    moved = move.apply(at_origin)
    np.testing.assert_array_equal(moved, encode_grid(grid, (move.rows, move.cols)))
    np.testing.assert_array_equal(move.invert(moved), at_origin)


def test_translations_work_on_a_batch_of_canvases(small_tasks: TaskSet) -> None:
    task = small_tasks.tasks["0692e18c"]  # 3x3 inputs, 9x9 outputs
    canvases = encode_grids([ex.output for ex in task.train])
    move = Translation(21, 21)  # 9x9 outputs end on the last row and column: their EOS border falls off
    moved = move.apply(canvases)
    assert moved.shape == canvases.shape
    expected = encode_grids([ex.output for ex in task.train], [(21, 21)] * len(task.train))
    np.testing.assert_array_equal(moved, expected)
    np.testing.assert_array_equal(move.invert(moved), canvases)


def test_the_zero_translation_is_the_identity() -> None:
    canvas = encode_grid(g([[1, 2], [3, 4]]))
    np.testing.assert_array_equal(Translation(0, 0).apply(canvas), canvas)
    np.testing.assert_array_equal(Translation(0, 0).invert(canvas), canvas)


def test_a_translation_that_pushes_colours_off_the_canvas_is_refused() -> None:
    with pytest.raises(ValueError):
        Translation(28, 0).apply(encode_grid(np.ones((3, 3), dtype=np.uint8)))
    with pytest.raises(ValueError):
        Translation(30, 0)


def test_random_translations_fit_the_largest_grid_and_reach_both_extremes() -> None:
    rng = np.random.default_rng(42)
    shapes = [(26, 3), (4, 27)]  # fitted to max h 26 and max w 27: rows 0..4, cols 0..3
    draws = {(t.rows, t.cols) for t in (random_translation(rng, shapes) for _ in range(500))}
    assert draws == set(itertools.product(range(5), range(4)))
    assert random_translation(rng, [(30, 30)]) == Translation(0, 0)


# ---------------------------------------------------------------------------------------------------------
# Content hashes


def test_grid_hash_is_sha256_of_the_shape_bytes_then_the_cells() -> None:
    assert grid_hash(g([[1, 2], [3, 4]])) == hashlib.sha256(bytes([2, 2, 1, 2, 3, 4])).hexdigest()
    same_cells = {grid_hash(g([[1, 2, 3, 4]])), grid_hash(g([[1], [2], [3], [4]])), grid_hash(g([[1, 2], [3, 4]]))}
    assert len(same_cells) == 3


def test_grid_hash_reads_non_contiguous_and_wider_integer_grids_as_their_uint8_c_order() -> None:
    grid = g([[1, 2, 3], [4, 5, 6]])
    assert grid_hash(grid.T) == grid_hash(np.ascontiguousarray(grid.T))
    assert grid_hash(grid.astype(np.int64)) == grid_hash(grid)
    with pytest.raises(ValueError):
        grid_hash(np.array([[256]]))


def test_the_task_hash_ignores_example_order_and_hashes_a_missing_output_as_black_1x1() -> None:
    a, b = Example(g([[1]]), g([[2]])), Example(g([[3]]), g([[4]]))
    assert task_content_hash(Task("x", (a, b), (Example(g([[5]]), None),))) == task_content_hash(
        Task("y", (b,), (Example(g([[5]]), g([[0]])), a))
    )
    pairs = sorted(f"{grid_hash(i)}|{grid_hash(o)}" for i, o in [(g([[1]]), g([[2]])), (g([[5]]), g([[0]]))])
    expected = hashlib.sha256("|".join(pairs).encode()).hexdigest()
    assert task_content_hash(Task("z", (a,), (Example(g([[5]]), None),))) == expected


# ---------------------------------------------------------------------------------------------------------
# Variants


def test_the_first_variant_is_the_identity_and_n_is_respected(small_tasks: TaskSet) -> None:
    task = small_tasks.tasks["0692e18c"]
    for n in (1, 2, 7, 50):
        variants = task_variants(task, n=n)
        assert len(variants) == n and variants[0] == Augmentation()
    with pytest.raises(ValueError):
        task_variants(task, n=0)


def test_no_two_variants_of_a_real_task_have_the_same_content(small_tasks: TaskSet) -> None:
    for task in list(small_tasks.tasks.values())[:6]:
        variants = task_variants(task, n=150, seed=3)
        hashes = {task_content_hash(v.apply_task(task)) for v in variants}
        assert len(hashes) == len(variants), task.task_id


def test_a_task_with_few_distinct_variants_gets_every_one_of_them_once() -> None:
    # Black and one colour; the diagonal looks the same under 4 of the 8 dihedrals, the anti-diagonal under the
    # other 4: 2 shapes x 9 colours = 18 distinct contents among the 72 plans.
    task = Task("few", (Example(g([[1, 0], [0, 1]]), g([[1, 1], [1, 1]])),), (Example(g([[1]]), None),))
    contents = {
        task_content_hash(Augmentation(tid, (0, c, *[x for x in range(1, 10) if x != c])).apply_task(task))
        for tid in range(8)
        for c in range(1, 10)
    }
    variants = task_variants(task, n=1000, seed=0)
    assert len(variants) == len(contents) == 18
    assert {task_content_hash(v.apply_task(task)) for v in variants} == contents


def test_variants_are_the_same_for_the_same_seed_and_differ_for_another(kaggle_tasks: TaskSet) -> None:
    task = kaggle_tasks.tasks["00576224"]
    assert task_variants(task, n=100, seed=0) == task_variants(task, n=100, seed=0)
    assert set(task_variants(task, n=100, seed=0)[1:]) != set(task_variants(task, n=100, seed=1)[1:])


def test_a_smaller_n_gives_a_prefix_of_a_larger_ns_variants(kaggle_tasks: TaskSet) -> None:
    task = kaggle_tasks.tasks["009d5c81"]
    assert task_variants(task, n=600)[:10] == task_variants(task, n=10)


def test_variants_depend_on_the_task_id_not_on_the_other_tasks(kaggle_tasks: TaskSet) -> None:
    tasks = [kaggle_tasks.tasks[t] for t in kaggle_tasks.task_ids[:5]]
    alone = build_variant_index(tasks[2:3], n=40)
    together = build_variant_index(tasks, n=40)
    assert alone.variants[tasks[2].task_id] == together.variants[tasks[2].task_id]
    renamed = Task("another id", tasks[2].train, tasks[2].test)
    assert task_variants(renamed, n=40) != task_variants(tasks[2], n=40)


def test_variants_do_not_depend_on_pythons_hash_seed(kaggle_tasks: TaskSet) -> None:
    script = (
        "from trm_kaggle.tasks import load_tasks; from trm_kaggle.augment import task_variants;"
        "t = load_tasks('sample_data/arc-agi_test_challenges.json').tasks['00576224'];"
        "print([v.name('x') for v in task_variants(t, n=5, seed=7)])"
    )
    here = [v.name("x") for v in task_variants(kaggle_tasks.tasks["00576224"], n=5, seed=7)]
    for hash_seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True,
            env={"PYTHONHASHSEED": hash_seed}, cwd=REPO_ROOT,
        )
        assert out.stdout.strip() == repr(here)


def test_a_thousand_variants_take_well_under_50_ms_per_task(kaggle_tasks: TaskSet) -> None:
    tasks = [kaggle_tasks.tasks[t] for t in kaggle_tasks.task_ids[::10]]  # 24 real tasks
    start = time.perf_counter()
    for task in tasks:
        task_variants(task, n=1000)
    per_task = (time.perf_counter() - start) / len(tasks)
    assert per_task < 0.05, f"{per_task * 1000:.1f} ms per task"


def test_the_variant_index_numbers_every_variant_from_1_in_task_order(small_tasks: TaskSet) -> None:
    tasks = list(small_tasks.tasks.values())[:4]
    index = build_variant_index(tasks, n=30, seed=5)
    assert index.task_ids == [t.task_id for t in tasks]
    ids = [index.identifier(t, k) for t in index.task_ids for k in range(len(index.variants[t]))]
    assert ids == list(range(1, index.num_identifiers))
    assert index.first_id[tasks[0].task_id] == 1
    assert index.variants[tasks[1].task_id] == task_variants(tasks[1], n=30, seed=5)
    with pytest.raises(IndexError):
        index.identifier(tasks[0].task_id, len(index.variants[tasks[0].task_id]))
    with pytest.raises(ValueError):
        build_variant_index([tasks[0], tasks[0]], n=3)
