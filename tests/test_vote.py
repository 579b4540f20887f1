"""Voting end to end on real tasks: augment -> encode -> (stand-in) model -> decode -> invert -> vote."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from trm_kaggle import vote
from trm_kaggle.augment import Augmentation, VariantIndex, build_variant_index
from trm_kaggle.encoding import EOS_TOKEN, PAD_TOKEN, VOCAB_SIZE, encode_grid
from trm_kaggle.errors import ConfigError
from trm_kaggle.submission import build_submission, score_submission
from trm_kaggle.tasks import load_tasks
from trm_kaggle.vote import VoteBook, build_jobs, pass_at_k, run_votes

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"


@pytest.fixture(scope="module")
def small():
    """(TaskSet, solutions as uint8 arrays) for 16 real ARC-AGI-1 evaluation tasks."""
    raw = json.loads((SAMPLE / "small_solutions.json").read_text())
    solutions = {t: [np.array(g, dtype=np.uint8) for g in grids] for t, grids in raw.items()}
    return load_tasks(SAMPLE / "small_challenges.json"), solutions


def _every_dihedral_index(task_set, colour_maps_per_dihedral: int = 2, seed: int = 0) -> VariantIndex:
    """All 8 dihedral transforms, each with random colour maps (black fixed), for every task."""
    rng = np.random.default_rng(seed)
    variants, first_id, next_id = {}, {}, 1
    for task_id in task_set.task_ids:
        variants[task_id] = [
            Augmentation(d, (0, *(int(c) for c in rng.permutation(np.arange(1, 10)))))
            for d in range(8)
            for _ in range(colour_maps_per_dihedral)
        ]
        first_id[task_id] = next_id
        next_id += len(variants[task_id])
    return VariantIndex(list(task_set.task_ids), variants, first_id, next_id)


class Oracle:
    """A stand-in model that knows the answers: for each row it finds the variant by identifier and the
    test input by its augmented encoding, and returns one-hot logits of the augmented solution.
    `wrong_ids` answer with a wrong grid instead (every colour shifted by one), so books differ by variant."""

    def __init__(self, task_set, variant_index, solutions, wrong_ids=frozenset(), q_of=lambda ident: 0.0):
        self.answers: dict[tuple[int, bytes], np.ndarray] = {}
        for task_id, variants in variant_index.variants.items():
            for k, aug in enumerate(variants):
                ident = variant_index.identifier(task_id, k)
                for i, example in enumerate(task_set.tasks[task_id].test):
                    answer = solutions[task_id][i]
                    if ident in wrong_ids:
                        answer = np.where(answer > 0, answer % 9 + 1, 0).astype(np.uint8)
                    key = (ident, encode_grid(aug.apply(example.input)).tobytes())
                    self.answers[key] = encode_grid(aug.apply(answer))
        self.q_of = q_of
        self.batches: list[int] = []

    def predict(self, inputs, puzzle_identifiers, act_steps=None):
        assert inputs.dtype == torch.long and inputs.shape[1] == 900 and puzzle_identifiers.dtype == torch.long
        self.batches.append(len(inputs))
        rows = [
            self.answers[(int(ident), x.numpy().astype(np.uint8).tobytes())]
            for x, ident in zip(inputs, puzzle_identifiers)
        ]
        tokens = torch.from_numpy(np.stack(rows).astype(np.int64))
        logits = torch.nn.functional.one_hot(tokens, VOCAB_SIZE).float()
        q = torch.tensor([self.q_of(int(i)) for i in puzzle_identifiers], dtype=torch.float32)
        return logits, q


def _summary(book: VoteBook) -> dict:
    """Book content independent of insertion order: {(task, test): {grid bytes: (votes, q_sum)}}."""
    return {
        slot: {(c.grid.shape, c.grid.tobytes()): (c.votes, round(c.q_sum, 9)) for c in book.ranked(*slot)}
        for slot in book.slots()
    }


# ---------------------------------------------------------------------------------------------- end to end


def test_oracle_votes_recover_every_solution_through_all_8_dihedrals_and_colour_maps(small):
    task_set, solutions = small
    index = _every_dihedral_index(task_set)
    assert {aug.dihedral for aug in index.variants[task_set.task_ids[0]]} == set(range(8))
    model = Oracle(task_set, index, solutions)
    book = VoteBook()

    done = run_votes(model, task_set, index, (0, 16), book, batch_size=64)

    assert done == 16 * sum(len(task_set.tasks[t].test) for t in task_set.task_ids)
    for task_id, outputs in solutions.items():
        for i, solution in enumerate(outputs):
            (only,) = book.ranked(task_id, i)  # every variant, mapped back, agrees
            np.testing.assert_array_equal(only.grid, solution)
            assert only.votes == 16
    assert pass_at_k(book, solutions, 1) == 1.0


def test_trained_variant_index_votes_give_a_submission_scoring_one(small):
    task_set, solutions = small
    index = build_variant_index([task_set.tasks[t] for t in task_set.task_ids], n=6, seed=3)
    book = VoteBook()
    run_votes(Oracle(task_set, index, solutions), task_set, index, (0, 6), book, batch_size=32)
    submission = build_submission(task_set, book.predictions())
    score = score_submission(submission, {t: [g.tolist() for g in s] for t, s in solutions.items()})
    assert score.pass_at_1 == 1.0
    as_lists = {t: [g.tolist() for g in s] for t, s in solutions.items()}
    assert pass_at_k(submission, as_lists, 2) == pass_at_k(book, as_lists, 1) == 1.0


def test_majority_wins_over_a_minority_of_wrong_variants(small):
    task_set, solutions = small
    index = _every_dihedral_index(task_set)
    wrong = {index.identifier(t, k) for t in task_set.task_ids for k in (1, 5, 9)}
    book = VoteBook()
    run_votes(Oracle(task_set, index, solutions, wrong_ids=wrong), task_set, index, (0, 16), book)
    for task_id, outputs in solutions.items():
        first, second = book.ranked(task_id, 0)
        np.testing.assert_array_equal(first.grid, outputs[0])
        assert (first.votes, second.votes) == (13, 3)


# ---------------------------------------------------------------------------------------------- ranking


def test_equal_votes_are_ranked_by_mean_q_and_full_ties_keep_first_seen_order():
    book = VoteBook()
    a, b, c, d = (np.full((2, 2), v, dtype=np.uint8) for v in range(4))
    for grid, q in [(a, 0.2), (b, 0.9), (a, 0.2), (b, 0.9), (c, 0.5), (d, 0.5), (c, 0.1), (c, 0.1)]:
        book.add("t", 0, grid, q)
    ranked = book.ranked("t", 0)
    assert [int(r.grid[0, 0]) for r in ranked] == [2, 1, 0, 3]  # c has 3 votes; b beats a on mean q
    assert ranked[1].mean_q == pytest.approx(0.9)
    book.add("t", 1, a, 0.5)
    book.add("t", 1, d, 0.5)
    assert [int(g[0, 0]) for g in book.top("t", 1, k=2)] == [0, 3]
    assert len(book.top("t", 0, k=2)) == 2


def test_none_or_malformed_grids_are_not_votes():
    book = VoteBook()
    for bad in [None, np.zeros((0, 0), np.uint8), np.full((2, 2), 10), np.zeros((31, 1), np.uint8), np.zeros(3)]:
        assert book.add("t", 0, bad, 0.5) is False
    assert book.add("t", 0, [[1, 2]], float("nan")) is True
    assert book.num_votes() == 1 and book.ranked("t", 0)[0].mean_q == 0.0


def test_predictions_keep_test_inputs_in_place_when_one_has_no_votes():
    book = VoteBook()
    book.add("t", 2, [[3]], 0.5)
    predictions = book.predictions()
    assert [len(p) for p in predictions["t"]] == [0, 0, 1]


# ---------------------------------------------------------------------------------------------- robustness


class Scripted:
    """Returns the given tokens per row (cycled), as one-hot logits, optionally with NaN logits."""

    def __init__(self, rows, nan_rows=()):
        self.rows, self.nan_rows = rows, set(nan_rows)

    def predict(self, inputs, puzzle_identifiers, act_steps=None):
        tokens = np.stack([self.rows[i % len(self.rows)] for i in range(len(inputs))]).astype(np.int64)
        logits = torch.nn.functional.one_hot(torch.from_numpy(tokens), VOCAB_SIZE).float()
        for i in self.nan_rows:
            if i < len(inputs):
                logits[i] = float("nan")
        return logits, torch.zeros(len(inputs))


def test_malformed_predictions_give_no_vote_and_no_exception(small):
    task_set, _ = small
    first = task_set.task_ids[0]
    one_task = type(task_set)(task_set.source, [first], {first: task_set.tasks[first]}, {})
    index = build_variant_index([one_task.tasks[t] for t in one_task.task_ids], n=8, seed=0)
    n_variants = len(index.variants[one_task.task_ids[0]])
    all_pad = np.full(900, PAD_TOKEN)
    eos_first = np.full(900, PAD_TOKEN)
    eos_first[:31] = EOS_TOKEN  # border where the grid should start: nothing to crop
    rng = np.random.default_rng(0)
    no_colours = rng.integers(0, 2, 900)  # PAD/EOS noise, no grid anywhere
    garbage = rng.integers(0, VOCAB_SIZE, 900)
    garbage[0] = EOS_TOKEN  # noise that does not start with a colour has no top-left grid to crop
    good = encode_grid(np.array([[1, 2], [3, 4]], dtype=np.uint8))
    rows = [all_pad, eos_first, no_colours, garbage, good]
    book = VoteBook()

    done = run_votes(Scripted(rows, nan_rows=[5, 6, 7]), one_task, index, (0, n_variants), book, batch_size=8)

    assert done == n_variants
    # Only the well-formed row voted (NaN logits argmax to PAD: no grid), mapped back through its variant.
    (candidate,) = book.ranked(one_task.task_ids[0], 0)
    assert candidate.votes == 1
    assert candidate.grid.shape == (2, 2)


def test_a_row_that_fails_to_decode_costs_only_itself(small, monkeypatch):
    task_set, solutions = small
    index = build_variant_index([task_set.tasks[t] for t in task_set.task_ids], n=2, seed=0)
    real_decode = vote.decode_prediction
    calls = {"n": 0}

    def flaky(tokens):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated decoder failure")
        return real_decode(tokens)

    monkeypatch.setattr(vote, "decode_prediction", flaky)
    book = VoteBook()
    done = run_votes(Oracle(task_set, index, solutions), task_set, index, (0, 1), book, batch_size=16)
    assert done == 16
    assert book.num_votes() == 15


# ---------------------------------------------------------------------------------------------- stopping, shards, merge


def test_should_stop_halts_between_batches_keeping_the_votes_already_made(small):
    task_set, solutions = small
    index = _every_dihedral_index(task_set)
    model = Oracle(task_set, index, solutions)
    asked = {"n": 0}

    def stop_on_third_ask():
        asked["n"] += 1
        return asked["n"] >= 3

    progress = []
    book = VoteBook()
    done = run_votes(model, task_set, index, (0, 16), book, batch_size=10, should_stop=stop_on_third_ask,
                     progress=lambda d, total: progress.append((d, total)))
    assert done == 20 and model.batches == [10, 10]
    assert book.num_votes() == 20
    assert progress == [(0, 256), (10, 256), (20, 256)]
    # Variant-major order: the first 16 jobs are variant 0 of every task, so every task got a vote.
    assert all(book.ranked(t, 0) for t in task_set.task_ids)


def test_shards_0_and_1_of_2_merged_equal_the_unsharded_book(small):
    task_set, solutions = small
    index = _every_dihedral_index(task_set)
    wrong = {index.identifier(t, k) for t in task_set.task_ids for k in (0, 3, 4, 7)}

    def model():
        return Oracle(task_set, index, solutions, wrong_ids=wrong, q_of=lambda ident: (ident % 7) - 3.0)

    full = VoteBook()
    run_votes(model(), task_set, index, (0, 16), full, batch_size=24)
    halves = [VoteBook(), VoteBook()]
    for rank in range(2):
        run_votes(model(), task_set, index, (0, 16), halves[rank], batch_size=24, shard=(rank, 2))
    assert halves[0].num_votes() == halves[1].num_votes() == full.num_votes() // 2

    # As after all_gather_object: each half travels as a plain JSON-able dict.
    wire = [json.loads(json.dumps(h.to_dict())) for h in halves]
    merged = VoteBook.from_dict(wire[0]).merge(VoteBook.from_dict(wire[1]))
    assert _summary(merged) == _summary(full)
    for slot in full.slots():
        assert [c.grid.tobytes() for c in merged.ranked(*slot)] == [c.grid.tobytes() for c in full.ranked(*slot)]


def test_jobs_of_one_task_variant_stay_on_one_rank_and_shards_cover_all_jobs(small):
    task_set, _ = small
    index = _every_dihedral_index(task_set)
    full = build_jobs(task_set, index, (2, 9))
    shards = [build_jobs(task_set, index, (2, 9), shard=(r, 3)) for r in range(3)]
    assert sorted(j.identifier for s in shards for j in s) == sorted(j.identifier for j in full)
    owners = {}
    for rank, jobs in enumerate(shards):
        for job in jobs:
            assert owners.setdefault((job.task_id, job.variant), rank) == rank
    assert all(j.identifier == index.identifier(j.task_id, j.variant) for j in full)
    assert all(j.augmentation == index.variants[j.task_id][j.variant] for j in full)


def test_variants_beyond_a_tasks_count_are_skipped(small):
    task_set, _ = small
    index = build_variant_index([task_set.tasks[t] for t in task_set.task_ids], n=3, seed=0)
    short = task_set.task_ids[0]
    index.variants[short] = index.variants[short][:1]
    jobs = build_jobs(task_set, index, (0, 10))
    assert sum(j.task_id == short for j in jobs) == 1
    assert {j.variant for j in jobs} == {0, 1, 2}


def test_bad_ranges_shards_and_batch_sizes_are_config_errors(small):
    task_set, solutions = small
    index = build_variant_index([task_set.tasks[t] for t in task_set.task_ids], n=1, seed=0)
    for bad in [dict(variant_range=(3, 1)), dict(variant_range=(-1, 2)), dict(shard=(2, 2)), dict(batch_size=0)]:
        kwargs = dict(variant_range=(0, 1), book=VoteBook()) | bad
        with pytest.raises(ConfigError):
            run_votes(Oracle(task_set, index, solutions), task_set, index, **kwargs)


def test_book_round_trips_through_json(small):
    book = VoteBook()
    book.add("a", 0, [[1, 2], [3, 4]], 0.25)
    book.add("a", 0, [[1, 2], [3, 4]], 0.5)
    book.add("a", 1, [[9]], 0.125)
    again = VoteBook.from_dict(json.loads(json.dumps(book.to_dict())))
    assert _summary(again) == _summary(book)
