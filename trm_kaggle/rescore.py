"""Candidate re-scoring: reorder the voter's best candidates by the model's own likelihood of each one.

`selection="vote"` (the default) ranks candidates as upstream does: vote count, then mean sigmoid(q_halt).
`selection="rescore"` keeps the vote but also asks the model how likely each of the top-K candidates is,
seen through a fixed set of the task's augmentations, as the ARChitects' "product of experts" scoring does
(an LLM scoring its own candidates under several views of the task):

    views      = the task's first A trained variants (identity first)         # same set for every candidate
    logp_a(c)  = sum over non-PAD tokens t of a(c)'s canvas of log_stablemax(model(a(x), id_a))[t]
    lp(c)      = mean over the views of logp_a(c)                               # nats; log of a geometric mean
    n(c)       = non-PAD tokens of c's canvas (cells + EOS border; the same in every view)
    key(c)     = log(votes(c) / votes in the slot) + weight * N * lp(c) / n(c)  # N = largest n(c) of the slot

The top-K candidates of a (task, test input) are sorted by key, then votes, lp and mean q (so weight 0 is the
vote order with the likelihood breaking ties, and a large weight ranks by likelihood alone, as the ARChitects
did); candidates below the top K keep their vote order after them.

Why this rule:
  * Both terms are log-probabilities in nats: the vote share estimates how often the model lands on `c`
    across all voted views, the second term how strongly it supports `c` under the fixed views. Adding them
    is a product of two experts; the vote share's denominator is the same for every candidate of a slot, so
    only the vote ratio matters, and the key does not change with the number of variants voted.
  * Per token, scaled to the slot's largest canvas: PAD is never a training target, so a TRM likelihood
    summed over a candidate's own tokens gives a smaller grid a free pass on every cell it does not claim
    (an autoregressive LLM pays for stopping early; TRM does not). With the raw sum, rescoring moved attempt 1
    to a smaller, wrong-shaped grid: on the bundled CPU checkpoint (2 seeds x 20 held-out tasks,
    bench/rescore_rules.py) attempt 1 had the right shape for 45% / 39% of test inputs by vote, 36% / 22% by
    the summed rule, 50% / 39% by this one. Candidates of one shape get exactly their summed likelihood
    compared (n(c) = N), so nothing changes where the sum is fair.
  * Only candidates the voter already produced are scored: rescoring reorders, never invents.
  * Votes still count: a candidate needs about log(v1/v2) nats more (at the slot's canvas size) to overtake
    one with v1/v2 times its votes.

The log-probability is log-stablemax (f64), not log-softmax: post-training minimises stablemax cross-entropy
(train.act_loss), so log_stablemax of the logits is the likelihood the model was fitted to; a softmax of the
same logits has the same argmax but probabilities the model was never trained to get right. Targets are
exactly training labels: the candidate's canvas with its EOS border, PAD not scored.

TRM predicts every cell at once from the input alone, so one model row per (test input, view) scores all K
candidates: rescoring costs A rows per test input, the price of A more voting variants. Views are trained
variants with their own embedding rows (TRM_FACTS pitfall 12); a task with fewer variants uses those it has.

    predictions = rescore(model, task_set, variant_index, book, top_k=8, n_augmentations=8,
                          should_stop=lambda: budget.work_remaining() <= 0)
    write_submission(build_submission(task_set, predictions), "submission.json")

The budget is asked before every batch; a test input whose views were not all scored keeps its vote order.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch

from .encoding import GRID_SIZE, PAD_TOKEN, encode_grid
from .errors import ConfigError
from .train import log_stablemax
from .vote import Candidate, VoteBook

if TYPE_CHECKING:
    from .augment import VariantIndex
    from .tasks import TaskSet

log = logging.getLogger("trm_kaggle.rescore")

Grid = np.ndarray
Slot = tuple[str, int]
SELECTIONS = ("vote", "rescore")
DEFAULT_TOP_K = 8
DEFAULT_AUGMENTATIONS = 8
DEFAULT_WEIGHT = 1.0


def check_selection(selection: str) -> str:
    """The selection rule's name, or ConfigError naming the choices."""
    if selection not in SELECTIONS:
        raise ConfigError(f"selection must be one of {', '.join(SELECTIONS)}; got {selection!r}")
    return selection


def _check_positive(value: Any, name: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}") from exc
    if number < 1:
        raise ConfigError(f"{name} must be at least 1, got {value!r}")
    return number


def _target(augmentation, grid: Any) -> np.ndarray | None:
    """The candidate as seen through one view, as a training label canvas; None when it cannot be one."""
    try:
        return encode_grid(augmentation.apply(np.asarray(grid)))
    except Exception:  # noqa: BLE001 - a malformed candidate scores -inf, it never stops the others
        return None


def score_candidates(
    model: Any,
    task_set: "TaskSet",
    variant_index: "VariantIndex",
    book: VoteBook,
    top_k: int = DEFAULT_TOP_K,
    n_augmentations: int = DEFAULT_AUGMENTATIONS,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    act_steps: int | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[Slot, list[float]]:
    """{(task_id, test_index): mean log-probability (nats) of each of the slot's top-k voted candidates,
    in vote order}, for every slot with two or more candidates whose views were all run before a stop.

    A candidate that cannot be encoded (or gets non-finite logits) scores -inf; a model call that raises
    leaves its slots unscored. Never raises for what is in the book.
    """
    top_k = _check_positive(top_k, "top_k")
    n_augmentations = _check_positive(n_augmentations, "n_augmentations")
    batch_size = _check_positive(batch_size, "batch_size")
    device = torch.device(device)

    # One row per (slot, view); a slot's rows are consecutive, so a stop leaves whole slots done or not.
    slots: list[tuple[Slot, list[Candidate], int]] = []  # (slot, top-k candidates, number of views)
    rows: list[tuple[int, Any, int]] = []  # (slot position, augmentation, identifier)
    for task_id in task_set.task_ids:
        task = task_set.tasks.get(task_id)
        variants = variant_index.variants.get(task_id)
        if task is None or not variants:
            continue
        views = [(a, variant_index.identifier(task_id, k)) for k, a in enumerate(variants[:n_augmentations])]
        for test_index in range(len(task.test)):
            candidates = book.ranked(task_id, test_index)[:top_k]
            if len(candidates) < 2:  # nothing to reorder
                continue
            for augmentation, identifier in views:
                rows.append((len(slots), augmentation, identifier))
            slots.append(((task_id, test_index), candidates, len(views)))

    sums = [np.zeros(len(c)) for _, c, _ in slots]
    views_done = [0] * len(slots)
    failed: set[int] = set()  # slots with a failed model call: never complete, they keep the vote order
    failures = 0
    done = 0
    if progress is not None:
        progress(0, len(rows))
    for start in range(0, len(rows), batch_size):
        if should_stop():
            log.info("rescoring stopped after %d of %d rows; the rest keep their vote order", done, len(rows))
            break
        batch = rows[start : start + batch_size]
        try:
            inputs = np.stack([
                encode_grid(aug.apply(task_set.tasks[slots[pos][0][0]].test[slots[pos][0][1]].input))
                for pos, aug, _ in batch
            ]).astype(np.int64)
            identifiers = torch.tensor([ident for _, _, ident in batch], dtype=torch.int64, device=device)
            with torch.inference_mode():
                logits, _ = model.predict(torch.from_numpy(inputs).to(device), identifiers, act_steps=act_steps)
                logprobs = log_stablemax(logits.detach().to(torch.float64), dim=-1).cpu()
        except Exception:  # noqa: BLE001 - a failed call costs its own slots (they keep the vote order), no more
            failures += 1
            if failures == 1:
                log.warning("rescoring: a model call failed; its test inputs keep their vote order", exc_info=True)
            failed.update(pos for pos, _, _ in batch)
            done += len(batch)
            continue
        for row, (pos, aug, _) in enumerate(batch):
            for c, candidate in enumerate(slots[pos][1]):
                target = _target(aug, candidate.grid)
                if target is None:
                    sums[pos][c] = -math.inf
                    continue
                tokens = torch.from_numpy(target.astype(np.int64))
                picked = logprobs[row].gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
                value = float(picked[tokens != PAD_TOKEN].sum())
                sums[pos][c] += value if math.isfinite(value) else -math.inf
            views_done[pos] += 1
        done += len(batch)
        if progress is not None:
            progress(done, len(rows))
    if failures:
        log.warning("rescoring: %d model call(s) failed", failures)
    return {
        slot: (sums[pos] / n_views).tolist()
        for pos, (slot, _, n_views) in enumerate(slots)
        if views_done[pos] == n_views and pos not in failed
    }


def canvas_tokens(grid: Any) -> int:
    """Non-PAD tokens of a grid's canvas: its cells, plus the EOS row and column where they fit (0 if malformed)."""
    shape = np.shape(grid)
    if len(shape) != 2:
        return 0
    h, w = shape
    return h * w + (w if h < GRID_SIZE else 0) + (h if w < GRID_SIZE else 0)


def rank_rescored(candidates: Sequence[Candidate], log_probs: Sequence[float],
                  weight: float = DEFAULT_WEIGHT) -> list[Candidate]:
    """The candidates (with their mean summed log-probabilities, same order) sorted by the module's key:
    log vote share + weight * N * lp / n, then votes, lp, mean q; full ties keep the given order."""
    clean = [lp if math.isfinite(lp) or lp == -math.inf else -math.inf  # NaN ranks last, not arbitrarily
             for lp in log_probs]
    sizes = [canvas_tokens(c.grid) for c in candidates]
    scale = max([n for n, lp in zip(sizes, clean) if n and math.isfinite(lp)], default=1)

    def key(item: tuple[Candidate, float, int]) -> tuple[float, int, float, float]:
        candidate, lp, n = item
        combined = math.log(max(candidate.votes, 1))
        if weight != 0:  # 0 * -inf would be NaN: weight 0 means "votes first", whatever lp is
            combined += weight * (scale * lp / n if n and math.isfinite(lp) else -math.inf)
        return combined, candidate.votes, lp, candidate.mean_q

    items = sorted(zip(candidates, clean, sizes), key=key, reverse=True)
    return [candidate for candidate, _, _ in items]


def rescore(
    model: Any,
    task_set: "TaskSet",
    variant_index: "VariantIndex",
    book: VoteBook,
    top_k: int = DEFAULT_TOP_K,
    n_augmentations: int = DEFAULT_AUGMENTATIONS,
    weight: float = DEFAULT_WEIGHT,
    k: int = 2,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    act_steps: int | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, list[list[Grid]]]:
    """Predictions for build_submission, {task_id: [top-k grids per test input]}, with each slot's top
    candidates reordered by `rank_rescored`; a slot not scored (budget, failure, one candidate) keeps its
    vote order. Shaped exactly as VoteBook.predictions(k)."""
    try:
        weight = float(weight)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"weight must be a number, got {weight!r}") from exc
    if not weight >= 0 or math.isinf(weight):
        raise ConfigError(f"weight must be a finite number >= 0, got {weight!r}")
    top_k = _check_positive(top_k, "top_k")
    k = _check_positive(k, "k")
    scores = score_candidates(model, task_set, variant_index, book, top_k=top_k, n_augmentations=n_augmentations,
                              batch_size=batch_size, device=device, act_steps=act_steps, should_stop=should_stop,
                              progress=progress)
    predictions = book.predictions(k=k)
    for (task_id, test_index), log_probs in scores.items():
        ranked = book.ranked(task_id, test_index)
        order = rank_rescored(ranked[:top_k], log_probs, weight) + ranked[top_k:]
        predictions[task_id][test_index] = [c.grid for c in order[:k]]
    log.info("rescored %d test input(s) of %d with votes", len(scores), sum(1 for _ in book.slots()))
    return predictions
