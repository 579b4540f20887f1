"""The notebook's helpers against a simulated /kaggle/input tree (folder names as a competitor might pick them)."""

from __future__ import annotations

import json
import logging
import shutil
import sys
import types
from pathlib import Path

import pytest

from trm_kaggle import kaggle_env
from trm_kaggle.errors import CheckpointError, ConfigError, TaskFileError, TrmKaggleError
from trm_kaggle.submission import fallback_attempts, validate_submission
from trm_kaggle.tasks import load_tasks

REPO = Path(__file__).resolve().parents[1]
SMALL = REPO / "sample_data" / "small_challenges.json"  # 16 real ARC-AGI-1 evaluation tasks


def make_checkpoint(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"\0" * 16)  # only the layout matters to the lookup
    (folder / "manifest.json").write_text("{}")
    return folder


@pytest.fixture
def kaggle(tmp_path: Path) -> dict:
    """A Kaggle-like tree: competition data, wheels and checkpoint under slugs the code cannot know."""
    inputs = tmp_path / "input"
    (inputs / "arc-prize-2025").mkdir(parents=True)
    shutil.copy(SMALL, inputs / "arc-prize-2025" / "arc-agi_test_challenges.json")
    wheels = inputs / "my-trm-wheels-v3" / "wheels"
    wheels.mkdir(parents=True)
    (wheels / "trm_kaggle-0.1.0-py3-none-any.whl").write_bytes(b"PK")
    (inputs / "unrelated-dataset" / "a" / "b").mkdir(parents=True)
    (inputs / "unrelated-dataset" / "a" / "manifest.json").write_text("{}")  # a manifest without weights
    checkpoint = make_checkpoint(inputs / "trm-checkpoint" / "other" / "1" / "trm-arc2")
    working = tmp_path / "working"
    working.mkdir()
    environ = {
        "KAGGLE_KERNEL_RUN_TYPE": "Batch",
        "TRM_KAGGLE_INPUT_ROOT": str(inputs),
        "TRM_KAGGLE_WORKING_DIR": str(working),
    }
    env = kaggle_env.detect_environment(environ=environ, n_gpus=4)
    return {"env": env, "environ": environ, "inputs": inputs, "wheels": wheels, "checkpoint": checkpoint}


# ------------------------------------------------------------------------------------------- environment


def test_kaggle_session_is_told_apart_from_the_rerun_and_from_a_local_run(tmp_path):
    roots = {"TRM_KAGGLE_INPUT_ROOT": str(tmp_path), "TRM_KAGGLE_WORKING_DIR": str(tmp_path)}
    commit = kaggle_env.detect_environment(environ={"KAGGLE_KERNEL_RUN_TYPE": "Batch", **roots}, n_gpus=4)
    rerun = kaggle_env.detect_environment(
        environ={"KAGGLE_KERNEL_RUN_TYPE": "Batch", "KAGGLE_IS_COMPETITION_RERUN": "True", **roots}, n_gpus=4
    )
    local = kaggle_env.detect_environment(environ=roots, n_gpus=0)
    assert (commit.is_kaggle, commit.is_rerun, commit.keep_going) == (True, False, False)
    assert (rerun.is_kaggle, rerun.is_rerun, rerun.keep_going) == (True, True, True)
    assert (local.is_kaggle, local.is_rerun) == (False, False)
    assert commit.out_dir == tmp_path and local.out_dir == tmp_path / "out"


def test_kaggle_defaults_are_the_kaggle_folders_when_nothing_overrides_them():
    env = kaggle_env.detect_environment(environ={"KAGGLE_KERNEL_RUN_TYPE": "Interactive"}, n_gpus=0)
    assert env.input_root == Path("/kaggle/input")
    assert env.out_dir == Path("/kaggle/working")


def test_gpu_count_comes_from_torch_when_not_given(monkeypatch):
    fake_torch = types.SimpleNamespace(cuda=types.SimpleNamespace(device_count=lambda: 3))
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    assert kaggle_env.detect_environment(environ={}).n_gpus == 3
    monkeypatch.setitem(sys.modules, "torch", None)  # torch not importable: count nothing, raise nothing
    assert kaggle_env.detect_environment(environ={}).n_gpus == 0


# ------------------------------------------------------------------------------------------- budget


def test_rerun_budget_is_twelve_hours_less_the_margin_and_the_commit_only_rehearses(kaggle):
    rerun = kaggle_env.detect_environment(environ={**kaggle["environ"], "KAGGLE_IS_COMPETITION_RERUN": "1"}, n_gpus=4)
    assert kaggle_env.run_budget_seconds(rerun) == 12 * 3600 - kaggle_env.DEFAULT_MARGIN_MINUTES * 60
    assert kaggle_env.run_budget_seconds(rerun, full_hours=9, margin_minutes=20) == 9 * 3600 - 20 * 60
    assert kaggle_env.run_budget_seconds(kaggle["env"]) == kaggle_env.REHEARSAL_S
    local = kaggle_env.detect_environment(environ={"TRM_KAGGLE_INPUT_ROOT": "."}, n_gpus=0)
    assert kaggle_env.run_budget_seconds(local) == kaggle_env.LOCAL_S
    # The margin must cover start-up plus the hard-kill grace, or an overrunning run would hit Kaggle's wall.
    assert kaggle_env.DEFAULT_MARGIN_MINUTES * 60 > kaggle_env.KILL_GRACE_S


def test_budget_override_wins_everywhere_and_reads_seconds_minutes_and_hours(kaggle):
    for text, seconds in [("90", 90), ("90s", 90), ("15m", 900), ("2h", 7200), ("1h30m", 5400)]:
        environ = {**kaggle["environ"], "KAGGLE_IS_COMPETITION_RERUN": "1", "TRM_KAGGLE_BUDGET": text}
        assert kaggle_env.run_budget_seconds(kaggle_env.detect_environment(environ=environ, n_gpus=0)) == seconds
    for bad in ["", "soon", "-5m", "0", "3d"]:
        with pytest.raises(ConfigError):
            kaggle_env.budget_from_text(bad)
    assert kaggle_env.budget_from_text(kaggle_env.format_duration(41400.7)) == 41400


# ------------------------------------------------------------------------------------------- finding inputs


def test_competition_challenges_are_found_at_their_kaggle_path(kaggle):
    assert kaggle_env.find_challenges(kaggle["env"]) == kaggle["inputs"] / "arc-prize-2025" / "arc-agi_test_challenges.json"


def test_challenges_under_another_folder_are_found_by_name(kaggle):
    moved = kaggle["inputs"] / "my-copy" / "data"
    moved.mkdir(parents=True)
    shutil.move(kaggle["inputs"] / "arc-prize-2025" / "arc-agi_test_challenges.json", moved)
    assert kaggle_env.find_challenges(kaggle["env"]) == moved / "arc-agi_test_challenges.json"


def test_missing_challenges_raise_an_error_naming_where_it_looked(kaggle):
    shutil.rmtree(kaggle["inputs"] / "arc-prize-2025")
    with pytest.raises(TaskFileError, match=r"arc-agi_test_challenges\.json.*" + str(kaggle["inputs"])):
        kaggle_env.find_challenges(kaggle["env"])


def test_wheel_folder_is_found_whatever_the_dataset_is_called(kaggle):
    assert kaggle_env.find_wheel_dir(kaggle["env"]) == kaggle["wheels"]


def test_no_wheel_folder_is_a_clear_error(kaggle):
    shutil.rmtree(kaggle["inputs"] / "my-trm-wheels-v3")
    with pytest.raises(TrmKaggleError, match="trm_kaggle-"):
        kaggle_env.find_wheel_dir(kaggle["env"])


def test_checkpoint_is_found_under_the_input_root_without_kagglehub(kaggle, monkeypatch):
    monkeypatch.setitem(sys.modules, "kagglehub", None)  # `import kagglehub` raises ImportError
    assert kaggle_env.find_checkpoint(kaggle["env"]) == kaggle["checkpoint"]
    assert kaggle_env.find_checkpoint(kaggle["env"], handle="me/trm/pytorch/default/1") == kaggle["checkpoint"]


def test_kagglehub_failing_during_the_rerun_falls_back_with_one_log_line(kaggle, monkeypatch, caplog):
    def broken(handle, *args, **kwargs):
        raise RuntimeError("ConnectionError: Max retries exceeded\n(no internet during rerun)")

    monkeypatch.setitem(sys.modules, "kagglehub", types.SimpleNamespace(model_download=broken, dataset_download=broken))
    with caplog.at_level(logging.INFO, logger="trm_kaggle.kaggle_env"):
        found = kaggle_env.find_checkpoint(kaggle["env"], handle="me/trm/pytorch/default/1")
    assert found == kaggle["checkpoint"]
    lines = [r.getMessage() for r in caplog.records if "kagglehub" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0] and "RuntimeError" in lines[0]


def test_kagglehub_copy_is_used_when_it_works_and_datasets_go_to_dataset_download(kaggle, tmp_path, monkeypatch):
    hub = make_checkpoint(tmp_path / "hub-cache" / "trm" / "ckpt")
    calls = []

    def download(kind):
        return lambda handle, *a, **k: calls.append((kind, handle)) or str(tmp_path / "hub-cache")

    monkeypatch.setitem(sys.modules, "kagglehub", types.SimpleNamespace(
        model_download=download("model"), dataset_download=download("dataset")))
    assert kaggle_env.find_checkpoint(kaggle["env"], handle="me/trm/pytorch/default/1") == hub
    assert kaggle_env.find_checkpoint(kaggle["env"], handle="me/trm-checkpoint") == hub
    assert calls == [("model", "me/trm/pytorch/default/1"), ("dataset", "me/trm-checkpoint")]


def test_missing_checkpoint_error_names_every_place_it_looked(kaggle, monkeypatch):
    monkeypatch.setitem(sys.modules, "kagglehub", None)
    shutil.rmtree(kaggle["inputs"] / "trm-checkpoint")
    with pytest.raises(CheckpointError) as raised:
        kaggle_env.find_checkpoint(kaggle["env"], handle="me/trm-checkpoint")
    assert "kagglehub me/trm-checkpoint" in str(raised.value) and str(kaggle["inputs"]) in str(raised.value)


def test_local_overrides_point_straight_at_the_challenges_and_the_checkpoint(kaggle, tmp_path):
    ckpt = make_checkpoint(tmp_path / "elsewhere" / "ckpt")
    environ = {**kaggle["environ"], "TRM_KAGGLE_CHALLENGES": str(SMALL), "TRM_KAGGLE_CHECKPOINT": str(ckpt)}
    env = kaggle_env.detect_environment(environ=environ, n_gpus=0)
    assert kaggle_env.find_challenges(env) == SMALL
    assert kaggle_env.find_checkpoint(env) == ckpt
    (tmp_path / "empty").mkdir()
    bad = kaggle_env.detect_environment(environ={**environ, "TRM_KAGGLE_CHECKPOINT": str(tmp_path / "empty")}, n_gpus=0)
    with pytest.raises(CheckpointError, match="TRM_KAGGLE_CHECKPOINT"):
        kaggle_env.find_checkpoint(bad)


# ------------------------------------------------------------------------------------------- launching


def test_several_gpus_launch_torchrun_and_cpu_launches_one_process(kaggle):
    multi = kaggle_env.launch_command(kaggle["env"], "ckpt", "challenges.json", "out", 41400.0)
    assert multi[:6] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4"]
    assert multi[6:] == ["-m", "trm_kaggle.cli", "run", "--checkpoint", "ckpt", "--challenges", "challenges.json",
                         "--budget", "41400s", "--out", "out"]
    for gpus in (0, 1):
        env = kaggle_env.detect_environment(environ=kaggle["environ"], n_gpus=gpus)
        single = kaggle_env.launch_command(env, "ckpt", "challenges.json", "out", 120)
        assert single[:4] == [sys.executable, "-m", "trm_kaggle.cli", "run"]


def test_stream_prints_lines_as_they_come_and_returns_the_exit_code(capsys):
    code = kaggle_env.stream([sys.executable, "-c", "import sys; print('one'); print('two', file=sys.stderr); sys.exit(3)"])
    assert code == 3
    assert "one\ntwo\n" in capsys.readouterr().out


def test_stream_never_raises_for_a_missing_program_or_a_run_that_outlives_its_limit():
    assert kaggle_env.stream(["/nonexistent/trm-kaggle"]) == 127
    assert kaggle_env.stream([sys.executable, "-c", "import time; time.sleep(60)"], timeout_s=0.5) == 124


def test_a_failing_stage_is_swallowed_on_the_rerun_and_raised_elsewhere(kaggle, capsys):
    rerun = kaggle_env.detect_environment(environ={**kaggle["environ"], "KAGGLE_IS_COMPETITION_RERUN": "1"}, n_gpus=0)
    with kaggle_env.stage(rerun, "checkpoint"):
        raise CheckpointError("no checkpoint")
    assert "[checkpoint] FAILED" in capsys.readouterr().out
    with kaggle_env.stage(rerun, "run"):
        undefined_result_of_the_failed_stage  # noqa: B018, F821
    assert "[run] skipped" in capsys.readouterr().out
    with pytest.raises(CheckpointError):
        with kaggle_env.stage(kaggle["env"], "checkpoint"):
            raise CheckpointError("no checkpoint")


def test_install_does_nothing_when_the_package_is_already_importable(tmp_path, monkeypatch):
    # From the repository root the checkout itself is importable, as in a local run of the notebook.
    assert kaggle_env.install_offline(tmp_path, cwd=REPO) == []
    monkeypatch.chdir(REPO)
    nowhere = kaggle_env.detect_environment(environ={"TRM_KAGGLE_INPUT_ROOT": str(tmp_path)}, n_gpus=0)
    assert kaggle_env.ensure_installed(nowhere) == []  # no wheel folder needed, so none looked for


def test_results_are_shown_from_the_report_and_a_missing_report_is_not_an_error(tmp_path, capsys):
    assert kaggle_env.show_results(tmp_path) is None
    (tmp_path / "report.json").write_text(json.dumps({"tasks": 16, "steps": 1200, "note": "x" * 300}))
    assert kaggle_env.show_results(tmp_path)["steps"] == 1200
    assert "1200" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------- submission repair


def test_missing_submission_is_written_from_the_fallback(tmp_path):
    path = tmp_path / "submission.json"
    status = kaggle_env.ensure_valid_submission(path, SMALL)
    assert status.startswith("REPAIRED") and "missing" in status
    assert validate_submission(path, SMALL) == []
    assert json.loads(path.read_text()) == fallback_attempts(load_tasks(SMALL))


def test_truncated_submission_is_replaced_by_a_valid_one(tmp_path):
    path = tmp_path / "submission.json"
    path.write_text(json.dumps(fallback_attempts(load_tasks(SMALL)))[:500])  # the run died mid-write
    assert kaggle_env.ensure_valid_submission(path, SMALL).startswith("REPAIRED")
    assert validate_submission(path, SMALL) == []


def test_partly_valid_submission_keeps_every_good_entry_and_fills_the_rest(tmp_path):
    tasks = load_tasks(SMALL)
    ids = tasks.task_ids
    good = {"attempt_1": [[1, 2], [3, 4]], "attempt_2": [[5]]}
    submission = {task_id: [dict(good)] for task_id in ids}
    del submission[ids[0]]  # missing task
    submission[ids[1]] = [{"attempt_1": [[1, 2], [3]], "attempt_2": [[5]]}]  # ragged grid
    submission[ids[2]] = [{"attempt_1": [[12]]}]  # colour out of range, attempt_2 missing
    submission[ids[3]] = []  # no entries
    submission["not-a-task"] = [dict(good)]  # extra id
    path = tmp_path / "submission.json"
    path.write_text(json.dumps(submission))

    status = kaggle_env.ensure_valid_submission(path, SMALL)
    assert status.startswith("REPAIRED") and f"kept {len(ids) - 4} entries, filled 4" in status
    repaired = json.loads(path.read_text())
    assert validate_submission(path, SMALL) == []
    fallback = fallback_attempts(tasks)
    for task_id in ids[:4]:
        assert repaired[task_id] == fallback[task_id]
    for task_id in ids[4:]:
        assert repaired[task_id] == [good]
    assert "not-a-task" not in repaired


def test_valid_submission_is_left_byte_for_byte_alone(tmp_path):
    path = tmp_path / "submission.json"
    path.write_text(json.dumps(fallback_attempts(load_tasks(SMALL)), indent=3))
    before = path.read_bytes()
    assert kaggle_env.ensure_valid_submission(path, SMALL).startswith("valid")
    assert path.read_bytes() == before


def test_a_broken_package_still_leaves_a_submission_file(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "trm_kaggle.tasks", None)  # e.g. the install failed half-way
    path = tmp_path / "submission.json"
    status = kaggle_env.ensure_valid_submission(path, SMALL)
    assert status.startswith("LAST RESORT")
    monkeypatch.undo()
    assert validate_submission(path, SMALL) == []
