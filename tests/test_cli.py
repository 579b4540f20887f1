"""The command line: exit codes and output of each command, called in-process through main()."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from trm_kaggle.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small():
    """A small real challenges/solutions pair (16 ARC-AGI-1 evaluation tasks)."""
    return REPO / "sample_data" / "small_challenges.json", REPO / "sample_data" / "small_solutions.json"


def _perfect_submission(solutions: Path, path: Path) -> Path:
    data = json.loads(solutions.read_text())
    path.write_text(json.dumps({t: [{"attempt_1": g, "attempt_2": g} for g in grids] for t, grids in data.items()}))
    return path


def test_validate_submission_exits_0_for_a_valid_file(small, tmp_path, capsys):
    challenges, solutions = small
    submission = _perfect_submission(solutions, tmp_path / "s.json")
    assert main(["validate-submission", str(submission), str(challenges)]) == 0
    assert "valid" in capsys.readouterr().out


def test_validate_submission_exits_1_with_one_line_per_problem(small, tmp_path, capsys):
    challenges, solutions = small
    data = json.loads(_perfect_submission(solutions, tmp_path / "s.json").read_text())
    first, second = list(data)[:2]
    del data[first]
    data[second][0]["attempt_1"] = [[1, 2], [3]]
    (tmp_path / "bad.json").write_text(json.dumps(data))
    assert main(["validate-submission", str(tmp_path / "bad.json"), str(challenges)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"missing task {first!r}",
        f"task {second!r} test 0 attempt_1: row 1 has 1 cells, row 0 has 2 (not rectangular)",
    ]


def test_validate_submission_exits_1_for_a_file_that_is_not_json(small, tmp_path, capsys):
    challenges, _ = small
    (tmp_path / "s.json").write_text("not json")
    assert main(["validate-submission", str(tmp_path / "s.json"), str(challenges)]) == 1
    assert "is not JSON" in capsys.readouterr().out


def test_validate_submission_exits_2_with_one_line_when_a_file_is_unreadable(small, tmp_path, capsys):
    challenges, solutions = small
    submission = _perfect_submission(solutions, tmp_path / "s.json")
    assert main(["validate-submission", str(tmp_path / "absent.json"), str(challenges)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "absent.json" in err
    assert main(["validate-submission", str(submission), str(tmp_path / "absent_challenges.json")]) == 2
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_score_prints_pass_at_1_and_2_and_a_row_per_task(small, tmp_path, capsys):
    challenges, solutions = small
    submission = _perfect_submission(solutions, tmp_path / "s.json")
    assert main(["score", str(submission), str(solutions)]) == 0
    out = capsys.readouterr().out.splitlines()
    n_tasks = len(json.loads(solutions.read_text()))
    assert len(out) == 1 + n_tasks + 1
    assert out[-1] == f"tasks {n_tasks}  pass@1 1.0000  pass@2 1.0000"


def test_score_exits_2_when_the_submission_is_not_json(small, tmp_path, capsys):
    _, solutions = small
    (tmp_path / "s.json").write_text("{")
    assert main(["score", str(tmp_path / "s.json"), str(solutions)]) == 2
    assert "not JSON" in capsys.readouterr().err


def test_score_exits_2_when_the_solutions_are_malformed(small, tmp_path, capsys):
    _, solutions = small
    submission = _perfect_submission(solutions, tmp_path / "s.json")
    (tmp_path / "bad_solutions.json").write_text('{"00576224": 3}')
    assert main(["score", str(submission), str(tmp_path / "bad_solutions.json")]) == 2
    assert "'00576224' is a int" in capsys.readouterr().err


def test_keyboard_interrupt_exits_130(small, monkeypatch, capsys):
    import trm_kaggle.submission

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trm_kaggle.submission, "score_submission", interrupted)
    assert main(["score", "s.json", "t.json"]) == 130


def test_unknown_command_is_a_usage_error():
    with pytest.raises(SystemExit) as exit_info:
        main(["no-such-command"])
    assert exit_info.value.code == 2


def test_module_runs_as_a_script_and_lists_its_commands():
    done = subprocess.run(
        [sys.executable, "-m", "trm_kaggle.cli", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    assert "validate-submission" in done.stdout and "score" in done.stdout


# ---------------------------------------------------------------------------------------------- predict


def _predict_argv(checkpoint, challenges, out, augmentations=2):
    return ["predict", "--checkpoint", str(checkpoint), "--challenges", str(challenges),
            "--augmentations", str(augmentations), "--out", str(out), "--batch-size", "16"]


def test_predict_writes_a_valid_submission_from_a_real_checkpoint(small, tiny_checkpoint, tmp_path, capsys):
    challenges, _ = small
    out = tmp_path / "submission.json"
    assert main(_predict_argv(tiny_checkpoint, challenges, out)) == 0
    assert main(["validate-submission", str(out), str(challenges)]) == 0
    assert "32 jobs" in capsys.readouterr().err  # 16 tasks x 1 test input x 2 variants


def test_predict_with_an_oracle_model_scores_one(small, tmp_path, monkeypatch, capsys):
    """The command wires tasks -> variant index -> votes -> submission the same way the voter tests do."""
    import numpy as np

    import trm_kaggle.checkpoint
    from trm_kaggle.augment import build_variant_index
    from trm_kaggle.tasks import load_tasks
    from .test_vote import Oracle

    challenges, solutions = small
    task_set = load_tasks(challenges)
    raw = json.loads(solutions.read_text())
    answers = {t: [np.array(g, dtype=np.uint8) for g in grids] for t, grids in raw.items()}
    index = build_variant_index([task_set.tasks[t] for t in task_set.task_ids], n=3, seed=5)
    oracle = Oracle(task_set, index, answers)
    oracle.resize_puzzle_table = lambda n, mean=None: None
    oracle.eval = lambda: oracle
    monkeypatch.setattr(trm_kaggle.checkpoint, "load_checkpoint", lambda path, map_location="cpu": oracle)

    out = tmp_path / "submission.json"
    assert main(_predict_argv("unused", challenges, out, augmentations=3) + ["--seed", "5"]) == 0
    capsys.readouterr()
    assert main(["score", str(out), str(solutions), "--quiet"]) == 0
    assert capsys.readouterr().out.strip().endswith("pass@1 1.0000  pass@2 1.0000")


def test_predict_leaves_the_fallback_when_the_checkpoint_is_missing(small, tmp_path, capsys):
    challenges, _ = small
    out = tmp_path / "submission.json"
    assert main(_predict_argv(tmp_path / "no_such_checkpoint", challenges, out)) == 2
    assert len(capsys.readouterr().err.strip().splitlines()[-1:]) == 1
    assert main(["validate-submission", str(out), str(challenges)]) == 0


def test_predict_interrupted_while_voting_exits_130_with_a_valid_file(small, tiny_checkpoint, tmp_path, monkeypatch):
    import trm_kaggle.vote

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trm_kaggle.vote, "run_votes", interrupted)
    challenges, _ = small
    out = tmp_path / "submission.json"
    assert main(_predict_argv(tiny_checkpoint, challenges, out)) == 130
    assert main(["validate-submission", str(out), str(challenges)]) == 0


def test_predict_rejects_zero_augmentations(small, tiny_checkpoint, tmp_path, capsys):
    challenges, _ = small
    assert main(_predict_argv(tiny_checkpoint, challenges, tmp_path / "s.json", augmentations=0)) == 2
    assert "--augmentations" in capsys.readouterr().err
