"""Shared fixtures: the real ARC tasks in sample_data/ (see its README), each file loaded once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from trm_kaggle.tasks import TaskSet, load_tasks

SAMPLE_DATA = Path(__file__).resolve().parent.parent / "sample_data"
KAGGLE_TEST_CHALLENGES = SAMPLE_DATA / "arc-agi_test_challenges.json"
SMALL_CHALLENGES = SAMPLE_DATA / "small_challenges.json"
SMALL_SOLUTIONS = SAMPLE_DATA / "small_solutions.json"


@pytest.fixture(scope="session")
def kaggle_tasks() -> TaskSet:
    """The 240-task Kaggle placeholder (no solutions)."""
    return load_tasks(KAGGLE_TEST_CHALLENGES)


@pytest.fixture(scope="session")
def small_tasks() -> TaskSet:
    """16 ARC-AGI-1 evaluation tasks, every grid at most 12x12, with their solutions."""
    return load_tasks(SMALL_CHALLENGES, SMALL_SOLUTIONS)


@pytest.fixture(scope="session")
def every_real_grid(kaggle_tasks: TaskSet, small_tasks: TaskSet) -> list[tuple[str, object]]:
    """(where, grid) for every grid in sample_data: train inputs and outputs, test inputs, known test outputs."""
    grids = []
    for task_set in (kaggle_tasks, small_tasks):
        for task in task_set.tasks.values():
            for split in ("train", "test"):
                for i, ex in enumerate(getattr(task, split)):
                    grids.append((f"{task.task_id} {split}[{i}].input", ex.input))
                    if ex.output is not None:
                        grids.append((f"{task.task_id} {split}[{i}].output", ex.output))
    return grids


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A random, very small TRM saved in our checkpoint format (one ACT step, so CPU voting takes ~1 s)."""
    import torch

    from trm_kaggle.checkpoint import save_checkpoint
    from trm_kaggle.model import TinyRecursiveModel, TRMConfig

    torch.manual_seed(0)
    config = TRMConfig(hidden_size=32, num_heads=2, expansion=2.0, L_layers=1, H_cycles=1, L_cycles=1,
                       puzzle_emb_len=1, puzzle_emb_ndim=32, halt_max_steps=1, forward_dtype="float32")
    return save_checkpoint(TinyRecursiveModel(config), tmp_path_factory.mktemp("ckpt") / "tiny")
