"""Grids to 900-token sequences and back, exactly as upstream TRM lays them out (TRM_FACTS §1, §7.2).

A grid sits on a 30x30 canvas, flattened row-major. Tokens: 0 PAD (outside the grid), 1 EOS (the border just
below and just right of the grid), 2..11 the colours 0..9. The EOS row spans only the grid's own columns and the
EOS column only its own rows; the corner cell diagonal to the grid stays PAD. A grid that reaches the bottom (or
right) edge has no EOS row (or column).

    tokens = encode_grid(grid)                  # uint8 [900]
    crop_tokens(tokens)                         # the grid again
    decode_prediction(model_tokens)             # a grid, or None when the model drew no grid at (0, 0)
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from .tasks import Example, Grid

PAD_TOKEN = 0
EOS_TOKEN = 1
COLOUR_OFFSET = 2  # token = colour + 2
VOCAB_SIZE = 12
GRID_SIZE = 30
SEQ_LEN = GRID_SIZE * GRID_SIZE
IGNORE_LABEL_ID = -100  # labels equal to PAD become this at batch time: PAD is never a target, EOS is


def _check_grid(grid: np.ndarray, offset: tuple[int, int]) -> tuple[int, int, int, int]:
    # Grids from load_tasks always pass; this guards callers that build grids themselves (augment, tests).
    if grid.ndim != 2 or grid.size == 0:
        raise ValueError(f"expected a non-empty 2-D grid, got shape {grid.shape}")
    if grid.dtype.kind not in "ui" or grid.min() < 0 or grid.max() > 9:
        raise ValueError(f"grid values must be integer colours 0..9 (dtype {grid.dtype})")
    h, w = grid.shape
    r, c = int(offset[0]), int(offset[1])
    if r < 0 or c < 0 or r + h > GRID_SIZE or c + w > GRID_SIZE:
        raise ValueError(f"a {h}x{w} grid at offset ({r}, {c}) does not fit on the {GRID_SIZE}x{GRID_SIZE} canvas")
    return h, w, r, c


def _paint(canvas: np.ndarray, grid: np.ndarray, offset: tuple[int, int]) -> None:
    """Draw one grid and its EOS border onto an all-PAD [30, 30] canvas, in place."""
    h, w, r, c = _check_grid(grid, offset)
    canvas[r : r + h, c : c + w] = grid + COLOUR_OFFSET
    if r + h < GRID_SIZE:
        canvas[r + h, c : c + w] = EOS_TOKEN
    if c + w < GRID_SIZE:
        canvas[r : r + h, c + w] = EOS_TOKEN


def encode_grid(grid: Grid, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """The 900 tokens (uint8) of one grid placed with its top-left cell at `offset` (row, column)."""
    canvas = np.zeros((GRID_SIZE, GRID_SIZE), dtype=np.uint8)
    _paint(canvas, np.asarray(grid), offset)
    return canvas.reshape(SEQ_LEN)


def encode_example(
    inp: Grid, out: Grid | None, offset: tuple[int, int] = (0, 0)
) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, labels), both uint8 [900] at the same offset. With no output, labels are all PAD (unsupervised)."""
    labels = np.zeros(SEQ_LEN, dtype=np.uint8) if out is None else encode_grid(out, offset)
    return encode_grid(inp, offset), labels


def encode_grids(grids: Sequence[Grid], offsets: Sequence[tuple[int, int]] | None = None) -> np.ndarray:
    """uint8 [N, 900]: many grids at once into one array (offsets default to (0, 0))."""
    out = np.zeros((len(grids), GRID_SIZE, GRID_SIZE), dtype=np.uint8)
    for i, grid in enumerate(grids):
        _paint(out[i], np.asarray(grid), (0, 0) if offsets is None else offsets[i])
    return out.reshape(len(grids), SEQ_LEN)


def encode_examples(
    examples: Iterable[Example], offsets: Sequence[tuple[int, int]] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, labels), uint8 [N, 900] each, for a sequence of examples; a missing output gives all-PAD labels."""
    examples = list(examples)
    n = len(examples)
    inputs = np.zeros((n, GRID_SIZE, GRID_SIZE), dtype=np.uint8)
    labels = np.zeros((n, GRID_SIZE, GRID_SIZE), dtype=np.uint8)
    for i, ex in enumerate(examples):
        offset = (0, 0) if offsets is None else offsets[i]
        _paint(inputs[i], np.asarray(ex.input), offset)
        if ex.output is not None:
            _paint(labels[i], np.asarray(ex.output), offset)
    return inputs.reshape(n, SEQ_LEN), labels.reshape(n, SEQ_LEN)


def _as_canvases(tokens: object) -> np.ndarray:
    """Integer tokens shaped [900], [30, 30], [N, 900] or [N, 30, 30], as an [N, 30, 30] array."""
    arr = np.asarray(tokens)
    if arr.dtype.kind not in "biu":
        raise ValueError(f"tokens must be integers, got dtype {arr.dtype}")
    if arr.shape[-1:] != (SEQ_LEN,) and (arr.ndim < 2 or arr.shape[-2:] != (GRID_SIZE, GRID_SIZE)):
        raise ValueError(f"expected 900 tokens (or 30x30) per canvas, got shape {arr.shape}")
    return arr.reshape(-1, GRID_SIZE, GRID_SIZE)


def _crop_sizes(canvases: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of upstream's crop for each canvas in [N, 30, 30].

    Upstream scans rows 1..30 keeping a running column limit: the first non-colour cell in a row (left of the
    limit) lowers the limit to its column. The answer is the r x limit rectangle of largest area (first one on
    ties). Vectorised: the limit after row r is the running minimum of each row's run of colours from column 0.
    """
    is_colour = (canvases >= COLOUR_OFFSET) & (canvases < COLOUR_OFFSET + 10)
    full_rows = is_colour.all(axis=2)
    run = np.where(full_rows, GRID_SIZE, np.argmin(is_colour, axis=2))  # colours before the first non-colour
    limit = np.minimum.accumulate(run, axis=1)
    area = limit * np.arange(1, GRID_SIZE + 1)
    best = np.argmax(area, axis=1)  # the first maximum, as upstream's strict `>` keeps the earliest
    idx = np.arange(len(canvases))
    cols = limit[idx, best]
    rows = np.where(cols > 0, best + 1, 0)
    return rows, cols


def crop_tokens(tokens: object) -> Grid:
    """Upstream's `_crop`: the grid drawn at the top-left of a 900-token canvas (may be 0x0).

    A stray non-colour token shrinks the width of every later row, so the biggest top-left rectangle wins:
    an EOS at (2, 10) in an otherwise full canvas gives 30x10. A non-colour at (0, 0) gives a 0x0 grid.
    """
    canvases = _as_canvases(tokens)
    if len(canvases) != 1:
        raise ValueError(f"expected one canvas of 900 tokens, got {len(canvases)}")
    rows, cols = _crop_sizes(canvases)
    return (canvases[0, : rows[0], : cols[0]] - COLOUR_OFFSET).astype(np.uint8)


def decode_prediction(tokens: object) -> Grid | None:
    """The predicted grid of one 900-token canvas, or None ("no prediction") when the crop is empty.

    Never raises for an integer array of 900 values: anything outside 2..11 is simply not a colour.
    """
    grid = crop_tokens(tokens)
    return grid if grid.size else None


def decode_predictions(tokens: object) -> list[Grid | None]:
    """decode_prediction for each row of an [N, 900] array, with the crop computed for all rows at once."""
    canvases = _as_canvases(tokens)
    rows, cols = _crop_sizes(canvases)
    return [
        (canvases[i, :r, :c] - COLOUR_OFFSET).astype(np.uint8) if r else None
        for i, (r, c) in enumerate(zip(rows.tolist(), cols.tolist()))
    ]
