"""Candidate re-scoring on real tasks: votes tie, the model's likelihood under fixed views decides."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from trm_kaggle import rescore as rescore_module
from trm_kaggle.augment import build_variant_index
from trm_kaggle.encoding import VOCAB_SIZE, encode_grid
from trm_kaggle.errors import ConfigError
from trm_kaggle.rescore import check_selection, rank_rescored, rescore, score_candidates
from trm_kaggle.submission import build_submission, score_submission
from trm_kaggle.vote import Candidate, VoteBook


def _wrong(grid: np.ndarray) -> np.ndarray:
    """A plausible wrong answer: same shape, every non-black colour shifted by one."""
    return np.where(grid > 0, grid % 9 + 1, 0).astype(np.uint8)


class Believer:
    """A stand-in model that, for every view it is shown, puts `confidence` on the view's true answer's tokens.

    It looks the row up by (identifier, augmented test input), so it favours the true answer under every
    augmentation, and records the identifiers it was called with.
    """

    def __init__(self, task_set, index, solutions, confidence=4.0):
        self.answers = {}
        for task_id, variants in index.variants.items():
            for k, aug in enumerate(variants):
                ident = index.identifier(task_id, k)
                for i, example in enumerate(task_set.tasks[task_id].test):
                    key = (ident, encode_grid(aug.apply(example.input)).tobytes())
                    self.answers[key] = encode_grid(aug.apply(solutions[task_id][i]))
        self.confidence = confidence
        self.identifiers: list[int] = []

    def predict(self, inputs, puzzle_identifiers, act_steps=None):
        self.identifiers += [int(i) for i in puzzle_identifiers]
        rows = [self.answers[(int(i), x.numpy().astype(np.uint8).tobytes())]
                for x, i in zip(inputs, puzzle_identifiers)]
        tokens = torch.from_numpy(np.stack(rows).astype(np.int64))
        logits = torch.nn.functional.one_hot(tokens, VOCAB_SIZE).float() * self.confidence
        return logits, torch.zeros(len(inputs))


@pytest.fixture(scope="module")
def tied(small_tasks):
    """Every test input of the 16 real tasks: the true and a wrong answer with 2 votes each, q favouring
    the wrong one, so the vote order puts the wrong answer first."""
    solutions = {t: [ex.output for ex in small_tasks.tasks[t].test] for t in small_tasks.task_ids}
    index = build_variant_index([small_tasks.tasks[t] for t in small_tasks.task_ids], n=12, seed=0)
    book = VoteBook()
    for task_id, outputs in solutions.items():
        for i, truth in enumerate(outputs):
            for _ in range(2):
                book.add(task_id, i, _wrong(truth), 0.9)
                book.add(task_id, i, truth, 0.1)
    return small_tasks, solutions, index, book


def _score(task_set, solutions, predictions):
    as_lists = {t: [g.tolist() for g in s] for t, s in solutions.items()}
    return score_submission(build_submission(task_set, predictions), as_lists)


def test_vote_breaks_the_tie_by_q_and_puts_the_wrong_answer_first(tied):
    task_set, solutions, _, book = tied
    score = _score(task_set, solutions, book.predictions(k=1))
    assert score.pass_at_1 == 0.0


def test_rescore_ranks_the_true_answer_first_when_votes_tie(tied):
    task_set, solutions, index, book = tied
    model = Believer(task_set, index, solutions)
    predictions = rescore(model, task_set, index, book, top_k=8, n_augmentations=8, batch_size=16)
    for task_id, outputs in solutions.items():
        for i, truth in enumerate(outputs):
            first, second = predictions[task_id][i]
            np.testing.assert_array_equal(first, truth)
            np.testing.assert_array_equal(second, _wrong(truth))
    assert _score(task_set, solutions, predictions).pass_at_1 == 1.0


def test_rescore_scores_every_candidate_of_a_task_under_the_same_first_trained_views(tied, monkeypatch):
    task_set, solutions, index, book = tied
    seen: dict[int, list] = {}  # id of a candidate's grid in the book -> the views it was scored under
    real_target = rescore_module._target

    def recording(augmentation, grid):
        seen.setdefault(id(grid), []).append(augmentation)
        return real_target(augmentation, grid)

    monkeypatch.setattr(rescore_module, "_target", recording)
    model = Believer(task_set, index, solutions)
    scores = score_candidates(model, task_set, index, book, top_k=8, n_augmentations=5, batch_size=7)

    assert len(scores) == sum(len(o) for o in solutions.values())
    expected_ids = []
    for task_id in task_set.task_ids:
        views = index.variants[task_id][:5]
        assert views[0].is_identity
        for i in range(len(solutions[task_id])):
            for candidate in book.ranked(task_id, i):
                # The same 5 views, in order, for every candidate, whatever the batch boundaries.
                assert seen[id(candidate.grid)] == views
            expected_ids += [index.identifier(task_id, k) for k in range(5)]
    assert model.identifiers == expected_ids  # one model row per (test input, view), trained rows only


def test_budget_stop_keeps_vote_order_for_test_inputs_not_rescored(tied):
    task_set, solutions, index, book = tied
    asked = {"n": 0}

    def stop_after_one_batch():
        asked["n"] += 1
        return asked["n"] > 1

    predictions = rescore(Believer(task_set, index, solutions), task_set, index, book, n_augmentations=4,
                          batch_size=8, should_stop=stop_after_one_batch)
    firsts = [(t, i) for t in task_set.task_ids for i in range(len(solutions[t]))]
    rescored = firsts[:2]  # 8 rows = 2 test inputs x 4 views
    for task_id, i in firsts:
        expected = solutions[task_id][i] if (task_id, i) in rescored else _wrong(solutions[task_id][i])
        np.testing.assert_array_equal(predictions[task_id][i][0], expected)


def test_a_malformed_candidate_or_failing_model_never_raises(tied):
    task_set, solutions, index, _ = tied
    task_id = task_set.task_ids[0]
    truth = solutions[task_id][0]
    book = VoteBook()
    book.add(task_id, 0, truth, 0.1)
    # Candidates the book would never accept, slipped in behind its back, each with more votes.
    slot = book._slots[(task_id, 0)]
    slot["bad colours"] = Candidate(np.full((2, 2), 12, dtype=np.int64), votes=5, q_sum=5.0)
    slot["three dims"] = Candidate(np.zeros((2, 2, 2), dtype=np.uint8), votes=5, q_sum=5.0)
    slot["too big"] = Candidate(np.zeros((31, 31), dtype=np.uint8), votes=5, q_sum=5.0)

    predictions = rescore(Believer(task_set, index, solutions), task_set, index, book, k=4)
    np.testing.assert_array_equal(predictions[task_id][0][0], truth)  # the only candidate with a finite score

    class Broken:
        def predict(self, inputs, puzzle_identifiers, act_steps=None):
            raise RuntimeError("simulated model failure")

    class NaNs:
        def predict(self, inputs, puzzle_identifiers, act_steps=None):
            return torch.full((len(inputs), 900, VOCAB_SIZE), float("nan")), torch.zeros(len(inputs))

    for model in (Broken(), NaNs()):
        fallback = rescore(model, task_set, index, book, k=4)
        assert len(fallback[task_id][0]) == 4  # vote order, nothing lost
    submission = build_submission(task_set, predictions)
    assert all(len(entries) == task_set.num_test_inputs(t) for t, entries in submission.items())


def test_ranking_rule_trades_vote_ratio_against_log_probability():
    a = Candidate(np.zeros((1, 1), np.uint8), votes=4, q_sum=0.0)
    b = Candidate(np.ones((1, 1), np.uint8), votes=1, q_sum=1.0)
    # b is 4x less voted (log 4 = 1.39 nats): it needs more than 1.39 nats of mean log-probability to win.
    assert rank_rescored([a, b], [-2.0, -0.7]) == [a, b]
    assert rank_rescored([a, b], [-2.0, -0.5]) == [b, a]
    assert rank_rescored([a, b], [-2.0, -0.5], weight=0.0) == [a, b]  # weight 0: the vote order
    assert rank_rescored([a, b], [math.nan, -math.inf]) == [a, b]  # unusable scores fall back to votes


def test_a_smaller_grid_gets_no_free_pass_for_the_cells_it_does_not_claim():
    # Equal votes. The 1x1 answer's canvas has 3 scored tokens (cell, EOS right, EOS below), the 3x3 one 15.
    small = Candidate(np.zeros((1, 1), np.uint8), votes=2, q_sum=2.0)
    large = Candidate(np.ones((3, 3), np.uint8), votes=2, q_sum=0.0)
    # Summed, the small grid looks likelier (-3 > -6); per token it is not (-1.0 < -0.4): the large one wins.
    assert rank_rescored([small, large], [-3.0, -6.0]) == [large, small]
    # Same shape: the sums themselves are compared.
    other = Candidate(np.full((3, 3), 2, np.uint8), votes=2, q_sum=0.0)
    assert rank_rescored([large, other], [-6.0, -5.0]) == [other, large]


def test_selection_names_are_checked():
    assert check_selection("rescore") == "rescore"
    with pytest.raises(ConfigError, match="vote, rescore"):
        check_selection("best")
    with pytest.raises(ConfigError):
        rescore(None, None, None, VoteBook(), weight=-1)


# ---------------------------------------------------------------------------------------------- pipeline


def test_a_run_with_rescore_selection_rescores_after_voting_and_draws_the_learning_curve(tmp_path, small_tasks):
    import json

    from trm_kaggle.checkpoint import save_checkpoint
    from trm_kaggle.model import TinyRecursiveModel, TRMConfig
    from trm_kaggle.pipeline import RunOptions, run_pipeline
    from trm_kaggle.submission import validate_submission
    from trm_kaggle.train import TrainConfig

    torch.manual_seed(0)
    model = TinyRecursiveModel(TRMConfig(hidden_size=32, num_heads=2, L_layers=1, H_cycles=1, L_cycles=1,
                                         puzzle_emb_len=1, puzzle_emb_ndim=32, halt_max_steps=1,
                                         forward_dtype="float32"))
    save_checkpoint(model, tmp_path / "ckpt")
    first = small_tasks.task_ids[0]
    raw = json.loads((Path(__file__).resolve().parents[1] / "sample_data" / "small_challenges.json").read_text())
    (tmp_path / "one.json").write_text(json.dumps({first: raw[first]}))
    opts = RunOptions(checkpoint=str(tmp_path / "ckpt"), challenges=str(tmp_path / "one.json"),
                      out_dir=str(tmp_path / "out"), budget_s=120, max_steps=3, max_variants=4, measure_steps=1,
                      train=TrainConfig(global_batch_size=4, num_variants=4, warmup_steps=1),
                      selection="rescore", rescore_augmentations=4, device="cpu")
    result = run_pipeline(opts)

    assert result.report["inference"]["votes"] > 0
    assert "error" not in result.report["rescore"] and result.report["rescore"]["augmentations"] == 4
    assert validate_submission(result.submission, str(tmp_path / "one.json")) == []
    assert (tmp_path / "out" / "learning_curve.png").is_file()
    with pytest.raises(ConfigError, match="selection"):
        run_pipeline(RunOptions(checkpoint="x", challenges="y", out_dir=str(tmp_path / "bad"), budget_s=1,
                                selection="best", device="cpu"))
