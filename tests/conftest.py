"""Shared fixtures: offline Hugging Face settings, seeding, one thread for tiny models, the command line's working
folder and key file, and the real-data location (opt in with `pytestmark = pytest.mark.usefixtures(...)`)."""

import os
from pathlib import Path

import pytest
import torch
from helpers import SHARED_DATA, run_cli

from hf_lcrypt.keys import KEY_ENV_VAR

# Set before any test module imports transformers, datasets, evaluate or gradio.
for _name, _value in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_EVALUATE_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
}.items():
    os.environ.setdefault(_name, _value)


@pytest.fixture
def seeded():
    torch.manual_seed(0)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: the tiny test models gain nothing from a second one, and on a busy machine spinning
    OpenMP threads made them several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def cli_workdir(tmp_path, monkeypatch) -> Path:
    """The command line runs in a fresh folder, with no key file named by the environment."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(KEY_ENV_VAR, raising=False)
    return tmp_path


@pytest.fixture
def key_file(cli_workdir, capsys) -> Path:
    """A key made by `hf-lcrypt keygen` in the working folder."""
    rc, _, _ = run_cli(capsys, "keygen", "k.key")
    assert rc == 0
    return Path("k.key")
