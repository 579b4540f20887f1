"""The 30x30 token canvas: upstream's layout (TRM_FACTS §1.2) and upstream's crop (§7.2)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from trm_kaggle.encoding import (
    EOS_TOKEN,
    GRID_SIZE,
    PAD_TOKEN,
    SEQ_LEN,
    crop_tokens,
    decode_prediction,
    decode_predictions,
    encode_example,
    encode_examples,
    encode_grid,
    encode_grids,
)
from trm_kaggle.tasks import TaskSet

grids = arrays(np.uint8, st.tuples(st.integers(1, 30), st.integers(1, 30)), elements=st.integers(0, 9))


@st.composite
def placed_grids(draw) -> tuple[np.ndarray, tuple[int, int]]:
    grid = draw(grids)
    h, w = grid.shape
    return grid, (draw(st.integers(0, GRID_SIZE - h)), draw(st.integers(0, GRID_SIZE - w)))


def upstream_crop(tokens: np.ndarray) -> np.ndarray:
    """§7.2 read literally, one cell at a time: the reference the vectorised crop must agree with."""
    canvas = np.asarray(tokens).reshape(GRID_SIZE, GRID_SIZE)
    best_area, best = 0, (0, 0)
    limit = GRID_SIZE
    for rows in range(1, GRID_SIZE + 1):
        for col in range(limit):
            if not 2 <= canvas[rows - 1, col] <= 11:
                limit = col
                break
        if rows * limit > best_area:
            best_area, best = rows * limit, (rows, limit)
    return (canvas[: best[0], : best[1]] - 2).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------
# Layout


def test_colours_become_tokens_2_to_11_with_an_eos_border_and_a_pad_corner() -> None:
    canvas = encode_grid(np.array([[0, 1, 2], [3, 4, 9]], dtype=np.uint8)).reshape(GRID_SIZE, GRID_SIZE)
    assert canvas[:4, :5].tolist() == [
        [2, 3, 4, 1, 0],
        [5, 6, 11, 1, 0],
        [1, 1, 1, 0, 0],
        [0, 0, 0, 0, 0],
    ]
    assert canvas.dtype == np.uint8 and canvas.sum() == 2 + 3 + 4 + 5 + 6 + 11 + 5 * EOS_TOKEN


def test_an_offset_moves_the_grid_and_its_border_together() -> None:
    canvas = encode_grid(np.array([[7, 8]], dtype=np.uint8), offset=(3, 5)).reshape(GRID_SIZE, GRID_SIZE)
    assert canvas[3, 5:8].tolist() == [9, 10, EOS_TOKEN]
    assert canvas[4, 5:8].tolist() == [EOS_TOKEN, EOS_TOKEN, PAD_TOKEN]
    assert np.count_nonzero(canvas) == 5


@pytest.mark.parametrize(
    "shape, offset, eos_row, eos_col",
    [
        ((5, 30), (0, 0), True, False),  # 30 wide: no EOS column
        ((30, 5), (0, 0), False, True),  # 30 tall: no EOS row
        ((30, 30), (0, 0), False, False),  # full canvas: no EOS at all
        ((3, 4), (27, 26), False, False),  # pushed into the bottom-right corner by the offset
        ((3, 4), (26, 0), True, True),  # EOS row on the last canvas row
        ((1, 1), (0, 29), True, False),
    ],
)
def test_the_eos_row_and_column_appear_only_where_the_canvas_has_room(shape, offset, eos_row, eos_col) -> None:
    h, w = shape
    r, c = offset
    grid = np.full(shape, 5, dtype=np.uint8)
    canvas = encode_grid(grid, offset).reshape(GRID_SIZE, GRID_SIZE)
    expected = np.zeros((GRID_SIZE, GRID_SIZE), dtype=np.uint8)
    expected[r : r + h, c : c + w] = 7
    if eos_row:
        expected[r + h, c : c + w] = EOS_TOKEN
    if eos_col:
        expected[r : r + h, c + w] = EOS_TOKEN
    np.testing.assert_array_equal(canvas, expected)


def test_an_example_without_output_has_all_pad_labels() -> None:
    inputs, labels = encode_example(np.array([[1]], dtype=np.uint8), None, offset=(2, 2))
    assert inputs.reshape(GRID_SIZE, GRID_SIZE)[2, 2] == 3
    assert labels.shape == (SEQ_LEN,) and labels.dtype == np.uint8 and not labels.any()


def test_input_and_labels_of_an_example_share_the_offset(small_tasks: TaskSet) -> None:
    ex = small_tasks.tasks["0692e18c"].train[0]
    inputs, labels = encode_example(ex.input, ex.output, offset=(4, 1))
    np.testing.assert_array_equal(inputs, encode_grid(ex.input, (4, 1)))
    np.testing.assert_array_equal(labels, encode_grid(ex.output, (4, 1)))


def test_batch_encoders_agree_with_one_at_a_time(small_tasks: TaskSet) -> None:
    examples = [ex for task in small_tasks.tasks.values() for ex in task.train + task.test]
    offsets = [(i % 3, i % 5) for i in range(len(examples))]
    inputs, labels = encode_examples(examples, offsets)
    assert inputs.shape == labels.shape == (len(examples), SEQ_LEN)
    for i, ex in enumerate(examples):
        np.testing.assert_array_equal(inputs[i], encode_grid(ex.input, offsets[i]))
        np.testing.assert_array_equal(labels[i], encode_grid(ex.output, offsets[i]))
    np.testing.assert_array_equal(encode_grids([ex.input for ex in examples]), encode_examples(examples)[0])


@pytest.mark.parametrize(
    "grid, offset",
    [
        (np.zeros((31, 2), dtype=np.uint8), (0, 0)),
        (np.zeros((0, 0), dtype=np.uint8), (0, 0)),
        (np.zeros(4, dtype=np.uint8), (0, 0)),
        (np.array([[10]]), (0, 0)),
        (np.array([[-1]]), (0, 0)),
        (np.array([[2.5]]), (0, 0)),
        (np.zeros((3, 3), dtype=np.uint8), (28, 0)),
        (np.zeros((3, 3), dtype=np.uint8), (0, -1)),
    ],
    ids=["31 rows", "0x0", "1-D", "colour 10", "colour -1", "float", "offset past the edge", "negative offset"],
)
def test_a_grid_that_cannot_be_drawn_is_refused(grid: np.ndarray, offset: tuple[int, int]) -> None:
    with pytest.raises(ValueError):
        encode_grid(grid, offset)


@settings(max_examples=200, deadline=None)
@given(placed=placed_grids())
def test_any_grid_at_any_fitting_offset_is_drawn_with_exactly_its_border(placed) -> None:
    grid, (r, c) = placed
    h, w = grid.shape
    canvas = encode_grid(grid, (r, c)).reshape(GRID_SIZE, GRID_SIZE)
    np.testing.assert_array_equal(canvas[r : r + h, c : c + w], grid + 2)
    expected_eos = w * (r + h < GRID_SIZE) + h * (c + w < GRID_SIZE)
    assert np.count_nonzero(canvas == EOS_TOKEN) == expected_eos
    assert np.count_nonzero(canvas >= 2) == h * w
    if r == c == 0:
        np.testing.assert_array_equal(crop_tokens(canvas), grid)


# ---------------------------------------------------------------------------------------------------------
# Crop and decode


def test_every_real_grid_survives_encode_then_crop(every_real_grid) -> None:
    for where, grid in every_real_grid:
        cropped = crop_tokens(encode_grid(grid))
        assert cropped.dtype == np.uint8 and np.array_equal(cropped, grid), where


def test_a_stray_eos_narrows_every_later_row_and_the_largest_rectangle_wins() -> None:
    canvas = np.full((GRID_SIZE, GRID_SIZE), 5)
    canvas[2, 10] = EOS_TOKEN
    assert crop_tokens(canvas).shape == (30, 10)
    canvas[2, 10] = 5
    canvas[20, 10] = EOS_TOKEN  # now 20 full rows (area 600) beat 30 rows of 10 (area 300)
    assert crop_tokens(canvas).shape == (20, 30)


def test_ties_in_area_keep_the_shorter_rectangle_as_upstream_does() -> None:
    canvas = np.full((GRID_SIZE, GRID_SIZE), PAD_TOKEN)
    canvas[0, :4] = 3  # row 1: width 4 (area 4)
    canvas[1, :2] = 3  # rows 1-2: width 2 (area 4): a tie, the first stays
    assert crop_tokens(canvas).shape == (1, 4)


def test_a_non_colour_at_the_top_left_gives_an_empty_crop_and_no_prediction() -> None:
    canvas = np.full((GRID_SIZE, GRID_SIZE), 5)
    canvas[0, 0] = EOS_TOKEN
    assert crop_tokens(canvas).shape == (0, 0)
    assert decode_prediction(canvas.reshape(SEQ_LEN)) is None
    assert decode_prediction(np.zeros(SEQ_LEN, dtype=np.int64)) is None


def test_a_full_canvas_of_colours_decodes_to_a_30x30_grid() -> None:
    grid = decode_prediction(np.full(SEQ_LEN, 11, dtype=np.int64))
    assert grid.shape == (30, 30) and (grid == 9).all()


def test_decoding_a_batch_matches_decoding_each_row(small_tasks: TaskSet) -> None:
    rows = [encode_grid(ex.input) for task in small_tasks.tasks.values() for ex in task.train]
    rows.append(np.zeros(SEQ_LEN, dtype=np.uint8))
    batch = np.stack(rows).astype(np.int64)
    decoded = decode_predictions(batch)
    assert decoded[-1] is None
    for row, grid in zip(batch, decoded[:-1]):
        np.testing.assert_array_equal(grid, decode_prediction(row))


@pytest.mark.parametrize("shape", [(899,), (901,), (29, 30), ()])
def test_tokens_of_the_wrong_size_are_refused(shape) -> None:
    with pytest.raises(ValueError):
        decode_prediction(np.zeros(shape, dtype=np.int64))


# Noise drawn around the interesting values: colours, EOS, PAD, and values no model should emit.
token_values = st.one_of(st.integers(0, 11), st.integers(0, 11), st.integers(-(2**63), 2**63 - 1))


@settings(max_examples=200, deadline=None)
@given(tokens=arrays(np.int64, SEQ_LEN, elements=token_values))
def test_decoding_never_raises_for_any_900_integers_and_matches_upstreams_crop(tokens: np.ndarray) -> None:
    grid = decode_prediction(tokens)
    expected = upstream_crop(tokens)
    if expected.size == 0:
        assert grid is None
    else:
        assert grid.dtype == np.uint8 and np.array_equal(grid, expected) and grid.max() <= 9


@st.composite
def damaged_canvases(draw) -> np.ndarray:
    """A real-looking prediction: a grid at the top-left, then a few cells overwritten by any token."""
    grid = draw(grids)
    canvas = encode_grid(grid).astype(np.int64)
    for index in draw(st.lists(st.integers(0, SEQ_LEN - 1), max_size=6)):
        canvas[index] = draw(st.integers(-5, 300))
    return canvas


@settings(max_examples=200, deadline=None)
@given(canvas=damaged_canvases(), dtype=st.sampled_from([np.int64, np.int32, np.int16, np.uint16]))
def test_the_crop_agrees_with_upstream_on_damaged_predictions(canvas: np.ndarray, dtype) -> None:
    tokens = canvas.astype(dtype)  # wraps out-of-range values, which is fine: any integers at all are allowed
    np.testing.assert_array_equal(crop_tokens(tokens), upstream_crop(tokens))
    np.testing.assert_array_equal(crop_tokens(tokens.reshape(GRID_SIZE, GRID_SIZE)), upstream_crop(tokens))
