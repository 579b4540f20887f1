"""Voting: run the model on every trained variant of every test input, map each answer back, count votes.

The flow for one job (task, test input, variant k):

    augmented = variant.apply(test_input)          # the same colour map + dihedral the variant was trained on
    tokens    = encode_grid(augmented)              # top-left on the 30x30 canvas, as in upstream's test split
    logits, q = model.predict(tokens, identifier)   # identifier = the variant's trained embedding row
    grid      = variant.invert(decode_prediction(argmax(logits)))
    book.add(task, test_index, grid, sigmoid(q))

Candidates are ranked by (votes, mean sigmoid(q_halt)) descending; votes dominate and mean q only breaks
ties (TRM_FACTS §7.3, pitfall 23).  Variants must be the ones trained, with their trained identifiers
(pitfall 12), so jobs come from a VariantIndex.

Jobs are ordered variant-major (all tasks' variant 0, then all tasks' variant 1, ...) so that a run stopped
by the time budget has spread its votes over every task instead of exhausting the first tasks.

Several processes: each runs `run_votes(..., shard=(rank, world))` into its own book, then the books are
gathered and merged::

    books = [None] * world
    torch.distributed.all_gather_object(books, book.to_dict())
    full = VoteBook()
    for part in books:
        full.merge(VoteBook.from_dict(part))
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from .augment import Augmentation, grid_hash
from .encoding import decode_prediction, encode_grid
from .errors import ConfigError, SubmissionError

if TYPE_CHECKING:
    from .augment import VariantIndex
    from .tasks import TaskSet

log = logging.getLogger("trm_kaggle.vote")

Grid = np.ndarray
BOOK_FORMAT = 1


# ----------------------------------------------------------------------------------------------- the book


@dataclass
class Candidate:
    """One distinct answer (in the original frame) for one test input, and the votes it got."""

    grid: Grid
    votes: int = 0
    q_sum: float = 0.0

    @property
    def mean_q(self) -> float:
        return self.q_sum / self.votes if self.votes else 0.0


def _clean_grid(grid: Any) -> Grid | None:
    """The grid as a C-contiguous uint8 array when it is a usable answer, else None (no vote)."""
    if grid is None:
        return None
    array = np.asarray(grid)
    if array.ndim != 2 or array.size == 0 or max(array.shape) > 30:
        return None
    if not np.issubdtype(array.dtype, np.integer) or array.min() < 0 or array.max() > 9:
        return None
    return np.ascontiguousarray(array, dtype=np.uint8)


class VoteBook:
    """Candidates per (task_id, test_index), keyed by the content hash of the grid.

    Within a slot, candidates keep the order they were first seen, so full ties rank in that order
    (a stable sort, as upstream).  merge() keeps this book's candidates first.
    """

    def __init__(self) -> None:
        self._slots: dict[tuple[str, int], dict[str, Candidate]] = {}

    # -- filling

    def add(self, task_id: str, test_index: int, grid: Any, q_halt_prob: float) -> bool:
        """Count one vote for `grid`; None or a malformed grid counts nothing. Returns whether it counted."""
        clean = _clean_grid(grid)
        if clean is None:
            return False
        q = float(q_halt_prob)
        if not math.isfinite(q):  # a NaN would poison the mean and make the ranking order undefined
            q = 0.0
        slot = self._slots.setdefault((task_id, int(test_index)), {})
        key = grid_hash(clean)
        candidate = slot.get(key)
        if candidate is None:
            candidate = slot[key] = Candidate(clean)
        candidate.votes += 1
        candidate.q_sum += q
        return True

    def merge(self, other: "VoteBook") -> "VoteBook":
        """Add every vote of `other` into this book (for gathering shards); returns self."""
        for key, slot in other._slots.items():
            mine = self._slots.setdefault(key, {})
            for grid_key, candidate in slot.items():
                target = mine.get(grid_key)
                if target is None:
                    target = mine[grid_key] = Candidate(candidate.grid.copy())
                target.votes += candidate.votes
                target.q_sum += candidate.q_sum
        return self

    # -- reading

    def num_votes(self) -> int:
        """Total number of votes counted."""
        return sum(c.votes for slot in self._slots.values() for c in slot.values())

    def slots(self) -> Iterator[tuple[str, int]]:
        return iter(self._slots)

    def ranked(self, task_id: str, test_index: int) -> list[Candidate]:
        """Candidates by (votes, mean q) descending; ties keep first-seen order."""
        slot = self._slots.get((task_id, int(test_index)), {})
        return sorted(slot.values(), key=lambda c: (c.votes, c.mean_q), reverse=True)

    def top(self, task_id: str, test_index: int, k: int = 2) -> list[Grid]:
        return [c.grid for c in self.ranked(task_id, test_index)[:k]]

    def predictions(self, k: int = 2) -> dict[str, list[list[Grid]]]:
        """{task_id: [top-k grids for test input 0, 1, ...]} for build_submission. A test input with no
        votes gets an empty list in its position, so later inputs never shift."""
        result: dict[str, list[list[Grid]]] = {}
        for task_id, test_index in self._slots:
            per_input = result.setdefault(task_id, [])
            while len(per_input) <= test_index:
                per_input.append([])
        for task_id, per_input in result.items():
            for test_index in range(len(per_input)):
                per_input[test_index] = self.top(task_id, test_index, k)
        return result

    # -- (de)serialisation, for all_gather_object and for resuming

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": BOOK_FORMAT,
            "slots": [
                {
                    "task_id": task_id,
                    "test_index": test_index,
                    "candidates": [
                        {"grid": c.grid.tolist(), "votes": c.votes, "q_sum": c.q_sum} for c in slot.values()
                    ],
                }
                for (task_id, test_index), slot in self._slots.items()
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "VoteBook":
        if not isinstance(data, Mapping) or data.get("format") != BOOK_FORMAT:
            raise SubmissionError(f"not a vote book (expected format {BOOK_FORMAT})")
        book = cls()
        try:
            for slot in data["slots"]:
                target = book._slots.setdefault((str(slot["task_id"]), int(slot["test_index"])), {})
                for entry in slot["candidates"]:
                    grid = _clean_grid(entry["grid"])
                    if grid is None:
                        raise ValueError(f"bad grid in {slot['task_id']!r} test {slot['test_index']}")
                    target[grid_hash(grid)] = Candidate(grid, int(entry["votes"]), float(entry["q_sum"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise SubmissionError(f"vote book is malformed: {exc}") from exc
        return book


# ----------------------------------------------------------------------------------------------- jobs


@dataclass(frozen=True)
class InferenceJob:
    """One model row: a test input of a task, seen through the task's k-th trained variant."""

    task_id: str
    test_index: int
    variant: int
    identifier: int
    augmentation: Augmentation


def build_jobs(
    task_set: "TaskSet",
    variant_index: "VariantIndex",
    variant_range: tuple[int, int],
    shard: tuple[int, int] = (0, 1),
) -> list[InferenceJob]:
    """The jobs of one shard: variants k in [lo, hi) of every valid task (a task with fewer variants
    contributes the ones it has), every test input of each.  (task, variant) groups are dealt to ranks
    round-robin, so all test inputs of one variant run on the same rank."""
    lo, hi = _check_range(variant_range)
    rank, world = _check_shard(shard)
    tasks = [t for t in task_set.task_ids if t in task_set.tasks]
    missing = [t for t in tasks if t not in variant_index.variants]
    if missing:
        log.warning("%d task(s) have no trained variants and get no votes, e.g. %r", len(missing), missing[0])
    groups = [
        (task_id, k)
        for k in range(lo, hi)
        for task_id in tasks
        if task_id in variant_index.variants and k < len(variant_index.variants[task_id])
    ]
    return [
        InferenceJob(task_id, test_index, k, variant_index.identifier(task_id, k), variant_index.variants[task_id][k])
        for task_id, k in groups[rank::world]
        for test_index in range(len(task_set.tasks[task_id].test))
    ]


def _check_range(variant_range: Sequence[int]) -> tuple[int, int]:
    try:
        lo, hi = (int(v) for v in variant_range)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"variant_range must be two ints (lo, hi), got {variant_range!r}") from exc
    if not 0 <= lo <= hi:
        raise ConfigError(f"variant_range must satisfy 0 <= lo <= hi, got ({lo}, {hi})")
    return lo, hi


def _check_shard(shard: Sequence[int]) -> tuple[int, int]:
    try:
        rank, world = (int(v) for v in shard)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"shard must be (rank, world_size), got {shard!r}") from exc
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"shard rank must be in [0, world_size), got rank {rank} of {world}")
    return rank, world


# ----------------------------------------------------------------------------------------------- running


def run_votes(
    model: Any,
    task_set: "TaskSet",
    variant_index: "VariantIndex",
    variant_range: tuple[int, int],
    book: VoteBook,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    act_steps: int | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    progress: Callable[[int, int], None] | None = None,
    shard: tuple[int, int] = (0, 1),
) -> int:
    """Vote with `model` on this shard's jobs into `book`; returns the number of jobs completed.

    `should_stop()` is asked before every batch, so the time budget can end the run at any moment and
    the book holds every vote of the batches already done.  `progress(done, total)` is called once
    before the first batch and after each batch.  A row whose prediction cannot be decoded (no grid,
    or any error mapping it back) gives no vote and never costs the other rows.  The model is used as
    given (put it on `device` beforehand).
    """
    if int(batch_size) < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    batch_size = int(batch_size)
    jobs = build_jobs(task_set, variant_index, variant_range, shard)
    device = torch.device(device)
    done = 0
    failures = 0
    if progress is not None:
        progress(0, len(jobs))
    for start in range(0, len(jobs), batch_size):
        if should_stop():
            log.info("stopped after %d of %d jobs", done, len(jobs))
            break
        batch = jobs[start : start + batch_size]
        test_inputs = [task_set.tasks[job.task_id].test[job.test_index].input for job in batch]
        inputs = np.stack([encode_grid(job.augmentation.apply(grid)) for job, grid in zip(batch, test_inputs)])
        inputs = inputs.astype(np.int64)
        identifiers = np.array([job.identifier for job in batch], dtype=np.int64)
        with torch.inference_mode():
            logits, q_halt_logits = model.predict(
                torch.from_numpy(inputs).to(device), torch.from_numpy(identifiers).to(device), act_steps=act_steps
            )
            tokens = logits.argmax(dim=-1).cpu().numpy()
            # f64 as upstream, so tiny q differences still order ties the same way.
            q_probs = torch.sigmoid(q_halt_logits.detach().to(torch.float64)).cpu().numpy()
        for row, job in enumerate(batch):
            try:
                grid = decode_prediction(tokens[row])
                if grid is not None:
                    book.add(job.task_id, job.test_index, job.augmentation.invert(grid), q_probs[row])
            except Exception:  # one bad row must never cost the batch; counted and reported once
                failures += 1
                if failures == 1:
                    log.warning("could not decode a prediction for %s test %d variant %d; skipping such rows",
                                job.task_id, job.test_index, job.variant, exc_info=True)
        done += len(batch)
        if progress is not None:
            progress(done, len(jobs))
    if failures:
        log.warning("%d prediction(s) could not be decoded and gave no vote", failures)
    return done


# ----------------------------------------------------------------------------------------------- scoring


def pass_at_k(
    book_or_submission: "VoteBook | Mapping[str, Any] | str | os.PathLike",
    solutions: "Mapping[str, Any] | str | os.PathLike",
    k: int,
) -> float:
    """Kaggle-style pass@k: per task the fraction of test inputs whose answer is among the top k, then the
    mean over the tasks of `solutions`.  A submission has only two attempts, so k >= 2 means pass@2."""
    from .submission import load_solutions, score_submission

    if k < 1:
        raise ConfigError(f"k must be at least 1, got {k}")
    solutions = load_solutions(solutions)
    if not isinstance(book_or_submission, VoteBook):
        score = score_submission(book_or_submission, solutions)
        return score.pass_at_1 if k == 1 else score.pass_at_2
    book = book_or_submission
    per_task = []
    for task_id, outputs in solutions.items():
        solved = 0
        for test_index, solution in enumerate(outputs):
            answer = _clean_grid(solution)
            if answer is None:
                continue
            top = {grid_hash(c.grid) for c in book.ranked(task_id, test_index)[:k]}
            solved += grid_hash(answer) in top
        per_task.append(solved / len(outputs) if outputs else 0.0)
    return sum(per_task) / len(per_task) if per_task else 0.0
