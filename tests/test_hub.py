"""fetch-checkpoint and publish fail fast, with one line and a non-zero exit, without network or credentials."""

import subprocess
import sys

import pytest

from trm_kaggle.cli import main


def _no_network(monkeypatch):
    # Offline mode makes huggingface_hub refuse at once instead of waiting on a closed network.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")


def test_fetch_checkpoint_without_network_says_so_in_one_line(monkeypatch, capsys, tmp_path):
    _no_network(monkeypatch)
    code = main(["fetch-checkpoint", "Trelis/TRM-ARC-AGI-II", "--filename", "step_723914", "--out", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "cannot download Trelis/TRM-ARC-AGI-II" in err
    assert not (tmp_path / "c").exists()


def test_fetch_checkpoint_without_huggingface_hub_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    assert main(["fetch-checkpoint", "Trelis/TRM-ARC-AGI-II"]) == 2
    assert "pip install" in capsys.readouterr().err


def _no_credentials(monkeypatch, tmp_path):
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def test_publish_without_credentials_fails_before_touching_the_network(monkeypatch, capsys, tmp_path):
    _no_credentials(monkeypatch, tmp_path)
    folder = tmp_path / "wheels"
    folder.mkdir()
    assert main(["publish", "--kind", "dataset", "me/trm-wheels", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no Kaggle credentials" in err


def test_publish_refuses_a_model_folder_that_is_not_a_checkpoint(monkeypatch, capsys, tmp_path):
    _no_credentials(monkeypatch, tmp_path)
    assert main(["publish", "--kind", "model", "me/trm/pyTorch/default", str(tmp_path)]) == 2
    assert "no manifest.json" in capsys.readouterr().err


def test_publish_reports_an_upload_failure_in_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("KAGGLE_USERNAME", "me")
    monkeypatch.setenv("KAGGLE_KEY", "not-a-key")
    kagglehub = pytest.importorskip("kagglehub")

    def refuse(*args, **kwargs):
        raise ConnectionError("network is unreachable")

    monkeypatch.setattr(kagglehub, "dataset_upload", refuse)
    assert main(["publish", "--kind", "dataset", "me/trm-wheels", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "upload of" in err and "network is unreachable" in err


def test_both_commands_exit_non_zero_from_a_real_subprocess(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HOME": str(tmp_path), "KAGGLE_CONFIG_DIR": str(tmp_path / "k"), "PATH": "/usr/bin:/bin"}
    fetch = subprocess.run([sys.executable, "-m", "trm_kaggle.cli", "fetch-checkpoint", "a/b", "--filename", "step_1",
                            "--out", str(tmp_path / "o")], capture_output=True, text=True, env=env, timeout=120)
    publish = subprocess.run([sys.executable, "-m", "trm_kaggle.cli", "publish", "--kind", "dataset", "a/b", str(tmp_path)],
                             capture_output=True, text=True, env=env, timeout=120)
    assert fetch.returncode == 2 and len(fetch.stderr.strip().splitlines()) == 1
    assert publish.returncode == 2 and len(publish.stderr.strip().splitlines()) == 1
