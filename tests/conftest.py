"""Shared fixtures: offline Hugging Face settings, seeding and the real-data location."""

import os
from pathlib import Path

import pytest
import torch
from helpers import SHARED_DATA

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
