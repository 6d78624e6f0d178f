"""hf-lcrypt as a user gets it: a wheel built from this tree, installed into a fresh folder outside the repository
(no source tree, no hub_cards/ beside it), publishes a model (a dry run: card templates, checks, secret scan) and the
result loads in a fresh process with transformers alone."""

import os
import subprocess
import sys
import textwrap

import pytest
from helpers import REPO_ROOT

pytestmark = pytest.mark.slow

USER_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    import hf_lcrypt
    site = Path(sys.argv[1])
    assert Path(hf_lcrypt.__file__).is_relative_to(site), hf_lcrypt.__file__

    from transformers import ViTConfig, ViTForImageClassification
    from hf_lcrypt import LCryptImageProcessor, LCryptKey, LCryptViTForImageClassification
    from hf_lcrypt.cli import main

    work = Path.cwd()
    key = LCryptKey.generate()
    key.save(work / "model.key")
    config = ViTConfig(image_size=16, patch_size=8, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=48, num_labels=2)
    keyed = LCryptViTForImageClassification.from_plain(ViTForImageClassification(config), key, (0.5,) * 3, (0.5,) * 3)
    keyed.save_pretrained(work / "model")
    LCryptImageProcessor.for_model(keyed).save_pretrained(work / "model")
    argv = ["publish", str(work / "model"), "--repo-id", "someone/keyed", "--key-file", str(work / "model.key"),
            "--dry-run", str(work / "repo")]
    assert main(argv) == 0
    card = (work / "repo" / "README.md").read_text()
    assert key.key_id in card and key.to_hex() not in card
    from hf_lcrypt.page_integrity import published_manifest  # the Space page's hashes ship with the package
    assert "lcrypt.mjs" in published_manifest()
    print(json.dumps(sorted(p.name for p in (work / "repo").iterdir())))
    """
)


def test_wheel_installs_publishes_and_loads_without_the_source_tree(tmp_path):
    dist, site, work = tmp_path / "dist", tmp_path / "site", tmp_path / "work"
    work.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", dist, REPO_ROOT], check=True, cwd=work)
    (wheel,) = dist.glob("hf_lcrypt-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", site, wheel], check=True, cwd=work)
    assert (site / "hf_lcrypt" / "hub" / "templates" / "model_card.md").is_file()
    source_packages = {p.parent.relative_to(REPO_ROOT) for p in (REPO_ROOT / "hf_lcrypt").rglob("__init__.py")}
    assert all((site / package / "__init__.py").is_file() for package in source_packages)  # pyproject lists them all
    assert not (site / "hub_cards").exists()
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run(
        [sys.executable, "-c", USER_SCRIPT, site], cwd=work, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    files = result.stdout.strip().splitlines()[-1]
    for name in ("README.md", "config.json", "model.safetensors", "modeling_lcrypt.py", "preprocessor_config.json"):
        assert f'"{name}"' in files
