"""Issue-level behaviour of `predict`: the whole Kaggle placeholder, and a file mixing good and malformed tasks."""

import json
import logging

import pytest

from trm_kaggle.cli import main
from trm_kaggle.submission import validate_submission

from .conftest import KAGGLE_TEST_CHALLENGES, SMALL_CHALLENGES


def test_predict_on_the_kaggle_placeholder_covers_all_240_tasks_and_259_test_inputs(tiny_checkpoint, tmp_path):
    out = tmp_path / "submission.json"
    assert main(["predict", "--checkpoint", str(tiny_checkpoint), "--challenges", str(KAGGLE_TEST_CHALLENGES),
                 "--augmentations", "1", "--out", str(out), "--batch-size", "64"]) == 0
    assert validate_submission(out, KAGGLE_TEST_CHALLENGES) == []
    submission = json.loads(out.read_text())
    assert len(submission) == 240
    assert sum(len(entries) for entries in submission.values()) == 259


def test_malformed_tasks_cost_nobody_else_their_predictions(tiny_checkpoint, tmp_path, caplog):
    good = json.loads(SMALL_CHALLENGES.read_text())
    good_ids = sorted(good)[:3]
    challenges = {t: good[t] for t in good_ids}
    base = good[good_ids[0]]
    ragged = [[1, 2, 3], [4, 5]]
    challenges.update({
        "bad_ragged": {"train": [{"input": ragged, "output": [[1]]}], "test": [{"input": [[1]]}]},
        "bad_31x31": {"train": [{"input": [[1] * 31] * 31, "output": [[1]]}], "test": [{"input": [[1]]}]},
        "bad_colour_10": {"train": base["train"], "test": [{"input": [[10]]}]},
        "bad_missing_test": {"train": base["train"]},
        "bad_no_train": {"train": [], "test": base["test"]},
    })
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps(challenges))
    out = tmp_path / "submission.json"
    with caplog.at_level(logging.WARNING, logger="trm_kaggle.tasks"):
        assert main(["predict", "--checkpoint", str(tiny_checkpoint), "--challenges", str(path),
                     "--augmentations", "2", "--out", str(out), "--batch-size", "16"]) == 0
    logged = [r.getMessage() for r in caplog.records]  # before validate_submission reloads (and re-reports) the file
    assert validate_submission(out, path) == []
    submission = json.loads(out.read_text())
    assert set(submission) == set(challenges)
    bad_ids = [t for t in challenges if t.startswith("bad_")]
    for task_id in bad_ids:  # exactly one clear message per bad task, naming it
        messages = [m for m in logged if task_id in m]
        assert len(messages) == 1, (task_id, messages)
    # the bad task with a keyable test input gets the fallback echo of it; the good tasks got model votes
    assert submission["bad_colour_10"][0]["attempt_1"] == [[0]]


@pytest.mark.parametrize("content", ["{not json", "[1, 2, 3]", '{"a": {"train": [], "te'])
def test_an_unreadable_challenges_file_is_one_line_and_exit_code_2(tiny_checkpoint, tmp_path, capsys, content):
    path = tmp_path / "broken.json"
    path.write_text(content)
    code = main(["predict", "--checkpoint", str(tiny_checkpoint), "--challenges", str(path),
                 "--augmentations", "1", "--out", str(tmp_path / "s.json")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "broken.json" in err
