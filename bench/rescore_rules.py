"""Compare candidate-ranking rules offline on one post-trained model and its votes (bench/accuracy.py --save-model).

    python bench/accuracy.py ... --save-model --out runs/accuracy
    python bench/rescore_rules.py runs/accuracy --threads 1

Every rule re-ranks the same voted candidates; the model's log-likelihood of each candidate (and of the true
answer, for diagnosis only) is computed once, under the task's first --augmentations trained views. Printed per rule:
pass@1/pass@2, attempt-1 shape match and cell accuracy, and where the true answer is among the candidates, its
mean rank. Also: how often the model's likelihood prefers the true answer to the vote's attempt 1 (summed over
the canvas, and per token) -- a signal that still exists when nothing is solved exactly.

Rules:
  vote          votes, then mean q (upstream)
  sum           log vote share + mean over views of the summed log-likelihood
  sum-only      the summed log-likelihood alone (the ARChitects' product of experts)
  per-token     log vote share + per-token log-likelihood x the slot's largest canvas (rescore.py's rule)
  same-shape    `sum`, but only among candidates of one shape: each shape keeps the positions the vote gave it
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from trm_kaggle.augment import build_variant_index, grid_hash  # noqa: E402
from trm_kaggle.checkpoint import load_checkpoint  # noqa: E402
from trm_kaggle.rescore import canvas_tokens as tokens  # noqa: E402
from trm_kaggle.rescore import rank_rescored, score_candidates  # noqa: E402
from trm_kaggle.submission import load_solutions  # noqa: E402
from trm_kaggle.tasks import TaskSet, load_tasks  # noqa: E402
from trm_kaggle.vote import VoteBook  # noqa: E402


def summed(candidates, sums):
    """log vote share + summed log-likelihood (no size correction), then votes, likelihood, mean q."""
    return [c for c, _ in sorted(zip(candidates, sums), reverse=True,
                                 key=lambda p: (math.log(p[0].votes) + p[1], p[0].votes, p[1], p[0].mean_q))]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="an accuracy run folder with results.json, post_trained/ and book.json")
    p.add_argument("--augmentations", type=int, default=8)
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    run = Path(args.run)
    report = json.loads((run / "results.json").read_text())
    model = load_checkpoint(run / "post_trained")
    prov = model.checkpoint_manifest["provenance"]
    full = load_tasks(report["challenges"])
    ids = prov["task_ids"]
    task_set = TaskSet(full.source, ids, {t: full.tasks[t] for t in ids}, {})
    index = build_variant_index([task_set.tasks[t] for t in ids], n=prov["num_variants"], seed=prov["seed"])
    if index.num_identifiers != model.num_puzzle_identifiers:
        raise SystemExit("the saved task table does not match the variant index")
    solutions_path = report.get("solutions") or report["challenges"].replace("_challenges", "_solutions")
    solutions = {t: [np.asarray(g, dtype=np.uint8) for g in grids]
                 for t, grids in load_solutions(solutions_path).items()}
    book = VoteBook.from_dict(json.loads((run / "book.json").read_text()))

    # Score every voted candidate and the true answer in one pass (the truth gets a vote in this copy only).
    scored_book = VoteBook.from_dict(book.to_dict())
    for t in ids:
        for i, truth in enumerate(solutions[t]):
            scored_book.add(t, i, truth, 0.0)
    lp = score_candidates(model, task_set, index, scored_book, top_k=10**6, n_augmentations=args.augmentations)
    likelihood = {}  # (task, i, grid hash) -> mean over views of the summed log-likelihood
    for (t, i), values in lp.items():
        for c, v in zip(scored_book.ranked(t, i), values):
            likelihood[(t, i, grid_hash(c.grid))] = v

    def order(rule: str, t: str, i: int):
        ranked = book.ranked(t, i)
        if rule == "vote" or len(ranked) < 2:
            return ranked
        top, rest = ranked[:args.top_k], ranked[args.top_k:]
        sums = [likelihood[(t, i, grid_hash(c.grid))] for c in top]
        if rule == "sum":
            return summed(top, sums) + rest
        if rule == "sum-only":
            return sorted(top, key=lambda c: (likelihood[(t, i, grid_hash(c.grid))], c.votes), reverse=True) + rest
        if rule == "per-token":
            return rank_rescored(top, sums) + rest
        if rule == "same-shape":
            out = list(top)
            for shape in {c.grid.shape for c in top}:
                slots = [j for j, c in enumerate(top) if c.grid.shape == shape]
                group = summed([top[j] for j in slots], [sums[j] for j in slots])
                for j, c in zip(slots, group):
                    out[j] = c
            return out + rest
        raise ValueError(rule)

    print(f"{len(ids)} tasks, {sum(len(solutions[t]) for t in ids)} test inputs, "
          f"{report['steps']} post-training steps, seed {report['seed']}, {report['machine']}")
    print(f"{'rule':<11} {'pass@1':>7} {'pass@2':>7} {'shape@1':>8} {'cells@1':>8} {'truth rank':>10}")
    for rule in ("vote", "sum", "sum-only", "per-token", "same-shape"):
        p1 = p2 = shape = cells = 0.0
        ranks = []
        for t in ids:
            s1 = s2 = 0
            for i, truth in enumerate(solutions[t]):
                ranked = order(rule, t, i)
                hashes = [grid_hash(c.grid) for c in ranked]
                key = grid_hash(truth)
                s1 += bool(hashes[:1]) and hashes[0] == key
                s2 += key in hashes[:2]
                if key in hashes:
                    ranks.append(hashes.index(key) + 1)
                if ranked and ranked[0].grid.shape == truth.shape:
                    shape += 1
                    cells += float((ranked[0].grid == truth).mean())
            p1 += s1 / len(solutions[t])
            p2 += s2 / len(solutions[t])
        n_in = sum(len(solutions[t]) for t in ids)
        mean_rank = f"{np.mean(ranks):.2f} ({len(ranks)})" if ranks else "-"
        print(f"{rule:<11} {p1 / len(ids):>7.3f} {p2 / len(ids):>7.3f} {shape / n_in:>8.3f} {cells / n_in:>8.3f} "
              f"{mean_rank:>10}")

    better_sum = better_tok = n = 0
    for t in ids:
        for i, truth in enumerate(solutions[t]):
            ranked = book.ranked(t, i)
            if not ranked or (t, i) not in lp or np.array_equal(ranked[0].grid, truth):
                continue
            first = ranked[0].grid
            a, b = likelihood[(t, i, grid_hash(truth))], likelihood[(t, i, grid_hash(first))]
            n += 1
            better_sum += a > b
            better_tok += a / tokens(truth) > b / tokens(first)
    print(f"true answer more likely than the vote's attempt 1: summed {better_sum}/{n}, per token {better_tok}/{n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
