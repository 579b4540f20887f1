"""Augmentations of a task: the 8 dihedral transforms, colour permutations, canvas translations (TRM_FACTS §1.3, §2).

Every augmented variant of a task has its own row in the model's task-embedding table, so the variants used for
inference must be exactly those used in post-training: `task_variants` draws them deterministically from
(seed, task id) alone, and `build_variant_index` numbers them.

    variants = task_variants(task, n=512, seed=0)       # variants[0] is the identity
    aug = variants[3]
    aug.invert(aug.apply(grid))                          # == grid
    index = build_variant_index(task_set.tasks.values(), n=512)
    index.identifier(task.task_id, 3)                    # the embedding row of that variant
"""

from __future__ import annotations

import hashlib
import operator
from dataclasses import dataclass
from functools import cached_property
from typing import Iterable

import numpy as np

from .encoding import COLOUR_OFFSET, EOS_TOKEN, GRID_SIZE, SEQ_LEN
from .tasks import Example, Grid, Task

NUM_DIHEDRALS = 8
DIHEDRAL_INVERSE = (0, 3, 2, 1, 4, 5, 6, 7)
IDENTITY_COLOURS = tuple(range(10))
NAME_SEPARATOR = "|||"
RETRIES_FACTOR = 5  # upstream: at most 5 * n random plans are tried before settling for fewer variants
_DUMMY_OUTPUT = np.zeros((1, 1), dtype=np.uint8)  # upstream's stand-in for an unknown test output


# ---------------------------------------------------------------------------------------------------------
# Dihedral transforms and colour maps


def _dihedral_view(grid: np.ndarray, tid: int) -> np.ndarray:
    if tid == 1:
        return np.rot90(grid, 1)
    if tid == 2:
        return np.rot90(grid, 2)
    if tid == 3:
        return np.rot90(grid, 3)
    if tid == 4:
        return np.fliplr(grid)
    if tid == 5:
        return np.flipud(grid)
    if tid == 6:
        return grid.T
    if tid == 7:
        return np.fliplr(np.rot90(grid, 1))
    return grid  # 0, and as upstream, any id outside 0..7


def dihedral_transform(grid: Grid, tid: int) -> Grid:
    """Upstream's transform `tid` (§2.1): 1-3 rotate 90/180/270 degrees anticlockwise, 4 mirrors left-right,
    5 flips upside down, 6 transposes, 7 reflects on the anti-diagonal; 0 (and any id outside 0..7) is identity.
    Returns a new C-ordered array."""
    return _dihedral_view(np.asarray(grid), tid).copy()


def inverse_dihedral_transform(grid: Grid, tid: int) -> Grid:
    return dihedral_transform(grid, DIHEDRAL_INVERSE[tid] if 0 <= tid < NUM_DIHEDRALS else 0)


@dataclass(frozen=True)
class Augmentation:
    """One plan: recolour (colour_map[c] is the new colour of c; 0 stays 0), then dihedral transform.

    The same plan is applied to every grid of a task. `invert` undoes it on a grid: inverse dihedral, then the
    inverse colour map.
    """

    dihedral: int = 0
    colour_map: tuple[int, ...] = IDENTITY_COLOURS

    def __post_init__(self) -> None:
        # Normalise numpy ints and lists to plain ints and a tuple, so equal plans are equal and hashable.
        object.__setattr__(self, "dihedral", operator.index(self.dihedral))
        object.__setattr__(self, "colour_map", tuple(map(operator.index, self.colour_map)))
        if not 0 <= self.dihedral < NUM_DIHEDRALS:
            raise ValueError(f"dihedral must be 0..7, got {self.dihedral!r}")
        if sorted(self.colour_map) != list(IDENTITY_COLOURS) or self.colour_map[0] != 0:
            raise ValueError(f"colour_map must be a permutation of 0..9 with 0 fixed, got {self.colour_map!r}")

    @cached_property
    def _forward_lut(self) -> np.ndarray:
        return np.array(self.colour_map, dtype=np.uint8)

    @cached_property
    def _inverse_lut(self) -> np.ndarray:
        return np.argsort(self._forward_lut).astype(np.uint8)

    @property
    def is_identity(self) -> bool:
        return self.dihedral == 0 and self.colour_map == IDENTITY_COLOURS

    def apply(self, grid: Grid) -> Grid:
        return _dihedral_view(self._forward_lut[grid], self.dihedral).copy()

    def invert(self, grid: Grid) -> Grid:
        return self._inverse_lut[_dihedral_view(np.asarray(grid), DIHEDRAL_INVERSE[self.dihedral])]

    def apply_task(self, task: Task) -> Task:
        """The task with every grid augmented; it keeps its bare task id (see `name` for the variant's)."""

        def example(ex: Example) -> Example:
            return Example(self.apply(ex.input), None if ex.output is None else self.apply(ex.output))

        return Task(task.task_id, tuple(map(example, task.train)), tuple(map(example, task.test)))

    def name(self, task_id: str) -> str:
        """Upstream's puzzle name (§2.3): "<id>|||t<dihedral>|||<10 digits of the colour map>"; identity: bare id."""
        if self.is_identity:
            return task_id
        digits = "".join(map(str, self.colour_map))
        return f"{task_id}{NAME_SEPARATOR}t{self.dihedral}{NAME_SEPARATOR}{digits}"


# ---------------------------------------------------------------------------------------------------------
# Translations of a whole 900-token canvas (post-training only: test inputs always sit at the top-left)


def _is_colour(tokens: np.ndarray) -> np.ndarray:
    return (tokens >= COLOUR_OFFSET) & (tokens < COLOUR_OFFSET + 10)


@dataclass(frozen=True)
class Translation:
    """Move a canvas `rows` down and `cols` right, as if the grid had been encoded at offset (rows, cols).

    Works on token canvases [900] or [N, 900] (PAD 0, before labels get IGNORE_LABEL_ID). An EOS row or column
    pushed off the edge is dropped, as encoding there would not draw it; `invert` puts it back.
    """

    rows: int
    cols: int

    def __post_init__(self) -> None:
        if not (0 <= self.rows < GRID_SIZE and 0 <= self.cols < GRID_SIZE):
            raise ValueError(f"translation ({self.rows}, {self.cols}) must be within 0..{GRID_SIZE - 1}")

    def _canvases(self, tokens: np.ndarray) -> np.ndarray:
        tokens = np.asarray(tokens)
        if tokens.shape[-1:] != (SEQ_LEN,) or tokens.ndim > 2:
            raise ValueError(f"expected tokens of shape [900] or [N, 900], got {tokens.shape}")
        return tokens.reshape(-1, GRID_SIZE, GRID_SIZE)

    def apply(self, tokens: np.ndarray) -> np.ndarray:
        """The canvas moved down-right. ValueError if a colour would fall off: the grid does not fit there."""
        src = self._canvases(tokens)
        r, c = self.rows, self.cols
        if _is_colour(src[:, GRID_SIZE - r :, :]).any() or _is_colour(src[:, :, GRID_SIZE - c :]).any():
            raise ValueError(f"translation ({r}, {c}) would push part of the grid off the canvas")
        out = np.zeros_like(src)
        out[:, r:, c:] = src[:, : GRID_SIZE - r, : GRID_SIZE - c]
        return out.reshape(np.shape(tokens))

    def invert(self, tokens: np.ndarray) -> np.ndarray:
        """The canvas moved back up-left, with the EOS row/column restored where `apply` dropped them."""
        src = self._canvases(tokens)
        r, c = self.rows, self.cols
        out = np.zeros_like(src)
        out[:, : GRID_SIZE - r, : GRID_SIZE - c] = src[:, r:, c:]
        # A grid that touched the bottom (right) edge lost its EOS row (column): draw it again under (beside)
        # the grid's own cells, which keeps the corner cell PAD.
        if r:
            touched = _is_colour(src[:, GRID_SIZE - 1, :]).any(axis=1)
            row = out[:, GRID_SIZE - r, :]
            row[_is_colour(out[:, GRID_SIZE - r - 1, :]) & touched[:, None]] = EOS_TOKEN
        if c:
            touched = _is_colour(src[:, :, GRID_SIZE - 1]).any(axis=1)
            col = out[:, :, GRID_SIZE - c]
            col[_is_colour(out[:, :, GRID_SIZE - c - 1]) & touched[:, None]] = EOS_TOKEN
        return out.reshape(np.shape(tokens))


def random_translation(rng: np.random.Generator, shapes: list[tuple[int, int]]) -> Translation:
    """A uniform offset that keeps every given grid shape on the canvas (§1.3: fitted to the largest h and w)."""
    if not shapes:
        raise ValueError("random_translation needs at least one grid shape")
    max_h = max(h for h, _ in shapes)
    max_w = max(w for _, w in shapes)
    if not (1 <= max_h <= GRID_SIZE and 1 <= max_w <= GRID_SIZE):
        raise ValueError(f"grid shapes must be within {GRID_SIZE}x{GRID_SIZE}, got {shapes}")
    rows = int(rng.integers(0, GRID_SIZE - max_h + 1))
    cols = int(rng.integers(0, GRID_SIZE - max_w + 1))
    return Translation(rows, cols)


# ---------------------------------------------------------------------------------------------------------
# Content hashes (§2.4)


def grid_hash(grid: Grid) -> str:
    """SHA-256 hex of [rows][cols] as one byte each, then the grid's uint8 bytes in C order (upstream's hash)."""
    grid = np.asarray(grid)
    if grid.ndim != 2 or grid.dtype.kind not in "ui" or (grid.size and (grid.min() < 0 or grid.max() > 255)):
        raise ValueError(f"grid_hash needs a 2-D grid of small integers, got {grid.dtype} {grid.shape}")
    h, w = grid.shape
    return hashlib.sha256(bytes((h, w)) + np.ascontiguousarray(grid, dtype=np.uint8).tobytes()).hexdigest()


def _examples(task: Task) -> Iterable[tuple[Grid, Grid]]:
    # A test example with no output is hashed with [[0]], as upstream does when solutions are missing.
    for ex in task.train + task.test:
        yield ex.input, _DUMMY_OUTPUT if ex.output is None else ex.output


def task_content_hash(task: Task) -> str:
    """SHA-256 hex over the sorted "<input hash>|<output hash>" of every train and test example."""
    pairs = sorted(f"{grid_hash(i)}|{grid_hash(o)}" for i, o in _examples(task))
    return hashlib.sha256("|".join(pairs).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------------
# Drawing the variants of a task


def _task_rng(task_id: str, seed: int) -> np.random.Generator:
    # A stable hash of (seed, id), never Python's hash() (salted per process): the same variants in every run,
    # whatever other tasks are loaded. surrogatepass: JSON can hand us ids with lone surrogates.
    digest = hashlib.sha256(f"{int(seed)}\x00{task_id}".encode("utf-8", "surrogatepass")).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


class _ContentKeys:
    """Exact content keys of a task's variants, cheaper than task_content_hash but equal exactly when it is.

    Per dihedral, every example of the task is laid out once as bytes "[h][w] input [h][w] output" (sides stored
    as 100 + side, so the colour table below leaves them alone), all examples end to end. A colour map is then
    one table lookup over that buffer; the sorted examples joined make the key. Examples are self-delimiting, so
    equal keys <=> equal multisets of examples <=> equal content hash.
    """

    def __init__(self, task: Task):
        examples = list(_examples(task))
        self._layouts = []
        for tid in range(NUM_DIHEDRALS):
            parts, spans, start = [], [], 0
            for inp, out in examples:
                size = 0
                for grid in (inp, out):
                    g = _dihedral_view(grid, tid)
                    parts += [np.array(g.shape, dtype=np.uint8) + _SIDE_BASE, g.ravel()]
                    size += 2 + g.size
                spans.append((start, start + size))
                start += size
            self._layouts.append((np.concatenate(parts), spans))
        self._lut = np.arange(256, dtype=np.uint8)

    def key(self, tid: int, colour_map: np.ndarray) -> bytes:
        """colour_map: uint8 [10], the new colour of each colour."""
        buffer, spans = self._layouts[tid]
        self._lut[:10] = colour_map
        data = self._lut.take(buffer).tobytes()
        return b"".join(sorted([data[a:b] for a, b in spans]))


_SIDE_BASE = 100  # grid sides (1..30) are stored as 101..130, out of reach of the colour table (0..9)
_TRIAL_CHUNK = 1024  # trials are drawn in fixed-size blocks, so a smaller n gives a prefix of a larger n's list


def task_variants(task: Task, n: int = 1000, seed: int = 0) -> list[Augmentation]:
    """Up to n augmentations of the task, the identity first, no two giving the same content (§2.4).

    Random plans (dihedral, then a permutation of colours 1..9) come from a generator seeded by (seed, task id)
    only, so the list is the same in every run and does not depend on the other tasks. At most 5n plans are
    tried (as upstream), so a task with few distinct variants (few colours, symmetric grids) gets fewer.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    variants = [Augmentation()]
    if n == 1:
        return variants
    used = sorted({int(c) for pair in _examples(task) for grid in pair for c in np.unique(grid)} - {0})
    used_columns = np.array(used, dtype=int) - 1  # colour c sits in column c - 1 of a permutation of 1..9
    keys = _ContentKeys(task)
    seen_content = {keys.key(0, np.arange(10, dtype=np.uint8))}
    seen_plans: set[bytes] = set()  # plans equal on the colours the task uses give equal content: skip them early
    lut = np.zeros(10, dtype=np.uint8)
    rng = _task_rng(task.task_id, seed)
    trials_left = RETRIES_FACTOR * n
    while trials_left > 0 and len(variants) < n:
        tids = rng.integers(0, NUM_DIHEDRALS, size=_TRIAL_CHUNK)
        perms = rng.permuted(np.tile(np.arange(1, 10, dtype=np.uint8), (_TRIAL_CHUNK, 1)), axis=1)
        plan_keys = np.concatenate([tids[:, None].astype(np.uint8), perms[:, used_columns]], axis=1)
        for i in range(min(_TRIAL_CHUNK, trials_left)):
            trials_left -= 1
            plan = plan_keys[i].tobytes()
            if plan in seen_plans:
                continue
            seen_plans.add(plan)
            tid = int(tids[i])
            lut[1:] = perms[i]
            content = keys.key(tid, lut)
            if content in seen_content:
                continue
            seen_content.add(content)
            variants.append(Augmentation(tid, (0, *perms[i].tolist())))
            if len(variants) == n:
                break
    return variants


@dataclass
class VariantIndex:
    """Rows of the task-embedding table: row 0 is blank; each task's variants take consecutive rows from 1."""

    task_ids: list[str]
    variants: dict[str, list[Augmentation]]
    first_id: dict[str, int]
    num_identifiers: int

    def identifier(self, task_id: str, k: int) -> int:
        """The embedding row of the k-th variant (0 = identity) of the task."""
        count = len(self.variants[task_id])
        if not 0 <= k < count:
            raise IndexError(f"task {task_id!r} has {count} variants, not {k + 1}")
        return self.first_id[task_id] + k


def build_variant_index(tasks: Iterable[Task], n: int = 1000, seed: int = 0) -> VariantIndex:
    """Draw every task's variants and number them from 1, in task order."""
    index = VariantIndex(task_ids=[], variants={}, first_id={}, num_identifiers=1)
    for task in tasks:
        if task.task_id in index.variants:
            raise ValueError(f"task {task.task_id!r} is given twice")
        variants = task_variants(task, n=n, seed=seed)
        index.task_ids.append(task.task_id)
        index.variants[task.task_id] = variants
        index.first_id[task.task_id] = index.num_identifiers
        index.num_identifiers += len(variants)
    return index
