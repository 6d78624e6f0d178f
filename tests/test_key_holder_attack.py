"""The key holder completes a keyless model's report, and only then can the trainer publish it as measured."""

import json
import subprocess
import sys

import pytest
from helpers import run_cli
from test_private_training import QUICK, _env, owner  # noqa: F401 (the encrypted dataset fixture)

from hf_lcrypt import LCryptKey
from hf_lcrypt.attacks.key_holder import pending_conditions
from hf_lcrypt.hub.checks import _MEASURED, UnmeasuredWeightsError
from hf_lcrypt.hub.publish import publish_model
from hf_lcrypt.training import main as train_main
from hf_lcrypt.training.arguments import SAFE_EMBEDDING_INIT_SCALE


@pytest.fixture(scope="module")
def keyless_model(owner, tmp_path_factory):  # noqa: F811
    key_file, ds, _ = owner
    run = tmp_path_factory.mktemp("trainer") / "run"
    with pytest.MonkeyPatch.context() as patch:
        for name in ("HF_LCRYPT_KEY_FILE", "HF_LCRYPT_KEY", "HF_LCRYPT_PASSPHRASE"):
            patch.delenv(name, raising=False)
        assert train_main([str(a) for a in ("--data", ds, "--output_dir", run, *QUICK)]) == 0
    return run / "model", key_file


def test_keyless_model_uses_the_key_hiding_initialisation(keyless_model):
    model_dir, _ = keyless_model
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["trained_without_key"]
    assert metrics["config"]["embedding_init_scale"] == SAFE_EMBEDDING_INIT_SCALE


def test_another_key_changes_nothing(keyless_model, tmp_path, capsys):
    model_dir, _ = keyless_model
    other = LCryptKey.generate()
    other.save(tmp_path / "other.key")
    before = {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file()}
    rc, _, err = run_cli(capsys, "attack", "--model", model_dir, "--key-file", tmp_path / "other.key",
                         "--data", "default", "--max-images", "8")  # fmt: skip
    assert rc != 0 and other.key_id in err.strip().splitlines()[-1], err[-500:]
    assert {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file()} == before


def _card(folder):
    return (folder / "README.md").read_text()


def test_key_holder_completes_the_report_and_unlocks_publishing(keyless_model, tmp_path, capsys, monkeypatch):
    model_dir, key_file = keyless_model
    before = json.loads((model_dir / "attack_report.json").read_text())
    files_before = sorted(p.name for p in model_dir.iterdir())
    monkeypatch.delenv("HF_LCRYPT_KEY_FILE", raising=False)
    assert set(pending_conditions(model_dir)) == {"wrong_key", "plain", "weights_only"}

    # the trainer, without the key: refused with the key holder's command, or published as unmeasured
    rc, _, err = run_cli(capsys, "publish", model_dir, "--repo-id", "trainer/keyless", "--dry-run", tmp_path / "cli")
    line = err.strip().splitlines()[-1]  # after the weights' loading bar
    assert rc != 0 and line.startswith("hf-lcrypt publish: error: ")
    assert "hf-lcrypt attack --model" in line and "--allow-leaky-weights" in line
    with pytest.raises(UnmeasuredWeightsError, match=r"hf-lcrypt attack --model .* --allow-leaky-weights"):
        publish_model(model_dir, "trainer/keyless", None, dry_run_dir=tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    unmeasured = publish_model(
        model_dir, "trainer/keyless", None, dry_run_dir=tmp_path / "unmeasured", allow_leaky_weights=True
    )
    assert unmeasured.weights_only["gate"]["measured"] is False
    card = _card(tmp_path / "unmeasured")
    assert "Not measured: this model was trained without the key" in card
    assert "stay at chance" not in card and "These weights give part of the key away" not in card
    assert "weights_leak_measured: false" in card and "weights_leak_allowed" not in card

    # the key holder, in a process with the key and the plain images
    done = subprocess.run(
        [sys.executable, "-m", "hf_lcrypt.cli", "attack", "--model", str(model_dir), "--key-file", str(key_file),
         "--data", "default", "--max-images", "32"],
        env=_env(), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "completed" in done.stdout
    after = json.loads((model_dir / "attack_report.json").read_text())
    assert pending_conditions(model_dir) == {} and after["for_the_key_holder"]["conditions"] == {}
    access = after["attacks"]["access"]
    assert after["accuracy"]["wrong_key"] == access["wrong_key_mean"]
    assert after["accuracy"]["plain"] == access["plain_images"]
    for name, value in before["accuracy"].items():
        assert after["accuracy"][name] == value, name
    for field in ("split", "num_images", "key_id", "cipher", "curves", "history", "majority_class_accuracy"):
        assert after[field] == before[field], field
    scores = json.loads((model_dir / "weights_only_attack.json").read_text())
    assert set(scores) >= _MEASURED
    assert scores == {k: v for k, v in after["attacks"]["weights-only"].items() if k != "seconds"}
    markdown = (model_dir / "attack_report.md").read_text()
    assert "## Measured by the key holder" in markdown and "## For the key holder" not in markdown
    # only the two reports were replaced and the scores added: no figure of plain images in the model folder
    assert sorted(p.name for p in model_dir.iterdir()) == sorted({*files_before, "weights_only_attack.json"})

    # the trainer again, still without the key: the gate reads the measured file
    measured = publish_model(model_dir, "trainer/keyless", None, dry_run_dir=tmp_path / "measured")
    gate = measured.weights_only["gate"]
    assert gate["measured"] is True and gate["leaks"] == []
    card = _card(tmp_path / "measured")
    assert "Not measured" not in card and "stay at chance" in card
