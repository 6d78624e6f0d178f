"""Standard exports (`hf-lcrypt export`): a plain ViT checkpoint and an ONNX graph that give the keyed model's logits
on encrypted inputs, load without hf-lcrypt or remote code (on transformers 4.x too), and hold no key; and the remote
code's one-line refusal of an older transformers."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import IMAGENET_MEAN, IMAGENET_STD, run_cli, run_fresh_python, tiny_vit
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification, ViTForImageClassification

from hf_lcrypt import LCryptImageProcessor, LCryptKey, LCryptViTForImageClassification
from hf_lcrypt.export import ExportError, check_onnx, export_model, export_onnx, export_vit, onnx_session
from hf_lcrypt.hub.checks import check_standard_load, find_secrets
from hf_lcrypt.transformers_version import check_transformers_version

pytestmark = pytest.mark.usefixtures("one_thread")
TF4_VENV = Path(os.environ.get("HF_LCRYPT_TF4_VENV", Path.home() / ".cache" / "hf-lcrypt" / "tf4-venv"))


@pytest.fixture
def key() -> LCryptKey:
    return LCryptKey.from_hex("0f" * 32)


@pytest.fixture
def keyed(key, seeded) -> LCryptViTForImageClassification:
    return LCryptViTForImageClassification.from_plain(tiny_vit(), key, IMAGENET_MEAN, IMAGENET_STD).eval()


@pytest.fixture
def model_dir(keyed, tmp_path) -> Path:
    folder = tmp_path / "keyed"
    keyed.save_pretrained(folder)
    LCryptImageProcessor.for_model(keyed).save_pretrained(folder)
    return folder


def ciphertexts(keyed, key, n=4, seed=0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    plain = [Image.fromarray(a) for a in rng.integers(0, 256, (n, 40, 36, 3), dtype=np.uint8)]
    return LCryptImageProcessor.for_model(keyed, key=key).encrypt_images(plain)


def test_vit_export_gives_the_keyed_logits_exactly(keyed, key, model_dir, tmp_path):
    out = export_model(model_dir, tmp_path / "vit", "vit", repo_id="someone/keyed-vit")
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "vit" and "auto_map" not in config
    assert config["lcrypt"]["key_id"] == key.key_id and config["lcrypt"]["image_size"] == [32, 32]
    assert config["lcrypt"]["folded_image_mean"] == list(IMAGENET_MEAN)
    assert find_secrets(out, key) == []

    vit = AutoModelForImageClassification.from_pretrained(out).eval()
    assert type(vit) is ViTForImageClassification
    encrypted = LCryptImageProcessor.for_model(keyed, key=key)(
        [Image.fromarray(a) for a in np.random.default_rng(1).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)],
        return_tensors="pt",
    )["pixel_values"]
    with torch.no_grad():
        assert torch.equal(vit(encrypted).logits, keyed(encrypted).logits)

    # Its own processor takes ciphertext PNGs as a server gets them and does what the keyed processor does there.
    images = ciphertexts(keyed, key)
    processor = AutoImageProcessor.from_pretrained(out)
    ours = LCryptImageProcessor.for_model(keyed)(images, do_encrypt=False, do_resize=False, return_tensors="pt")
    theirs = processor(images, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(theirs, ours["pixel_values"], atol=1e-6, rtol=0)
    card = (out / "README.md").read_text()
    assert "encrypted inputs only" in card.lower() and key.key_id in card and "hf-lcrypt classify" in card


def test_vit_export_loads_in_a_fresh_process_without_remote_code(keyed, key, tmp_path):
    out = export_vit(keyed, tmp_path / "vit")
    result = check_standard_load(out, keyed, key)
    assert result["max_logit_diff"] == 0.0 and result["max_logit_diff_processor"] < 1e-4


def test_a_changed_export_fails_the_check(keyed, key, tmp_path):
    out = export_vit(keyed, tmp_path / "vit")
    other = LCryptViTForImageClassification.from_plain(tiny_vit(), key, IMAGENET_MEAN, IMAGENET_STD)
    with pytest.raises(RuntimeError, match="other logits"):
        check_standard_load(out, other, key)


def test_mlp_patch_embedding_is_refused_for_vit_and_exported_to_onnx(key, tmp_path, capsys, cli_workdir):
    pytest.importorskip("onnxruntime")
    keyed = LCryptViTForImageClassification.from_plain(tiny_vit(patch_mlp=24), key, IMAGENET_MEAN, IMAGENET_STD)
    with pytest.raises(ExportError, match="MLP patch embedding.*--format onnx"):
        export_vit(keyed, tmp_path / "vit")
    assert not (tmp_path / "vit").exists()
    keyed.save_pretrained(tmp_path / "mlp")
    rc, _, err = run_cli(capsys, "export", tmp_path / "mlp", tmp_path / "vit2")
    assert rc == 1 and err.strip().splitlines()[-1].startswith("hf-lcrypt export: error: This model has an MLP patch")
    out = export_onnx(keyed, tmp_path / "onnx")
    assert check_onnx(out / "model.onnx", keyed.eval(), batch_sizes=(3,)) <= 1e-4


def test_onnx_runtime_agrees_with_pytorch_at_any_batch_size(keyed, key, model_dir, tmp_path, capsys, cli_workdir):
    pytest.importorskip("onnxruntime")
    rc, out_text, _ = run_cli(capsys, "export", model_dir, tmp_path / "onnx", "--format", "onnx")
    assert rc == 0 and "model.onnx" in out_text
    out = tmp_path / "onnx"
    assert find_secrets(out, key) == [] and not list(out.glob("*.py"))
    session = onnx_session(out / "model.onnx")
    for n in (1, 7, 32):
        pixels = LCryptImageProcessor.for_model(keyed)(
            ciphertexts(keyed, key, n=n, seed=n), do_encrypt=False, do_resize=False, return_tensors="pt"
        )["pixel_values"]
        (logits,) = session.run(["logits"], {"pixel_values": pixels.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(logits, keyed(pixels).logits.numpy(), atol=1e-4, rtol=0)
    # A model with other weights is told apart.
    other = LCryptViTForImageClassification.from_plain(tiny_vit(), key, IMAGENET_MEAN, IMAGENET_STD).eval()
    with pytest.raises(RuntimeError, match="differ"):
        check_onnx(out / "model.onnx", other)


def test_a_failed_export_leaves_nothing_behind(keyed, model_dir, tmp_path, monkeypatch):
    from hf_lcrypt import export

    def broken(config):
        raise OSError("disk full")

    monkeypatch.setattr(export, "processor_config", broken)  # fails after the weights were written
    with pytest.raises(OSError, match="disk full"):
        export_model(model_dir, tmp_path / "out" / "vit")
    assert list((tmp_path / "out").iterdir()) == []


def test_export_refuses_a_folder_in_use_and_an_unkeyed_model(keyed, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        export_vit(keyed, tmp_path / "full")
    unkeyed = LCryptViTForImageClassification(keyed.config.__class__(**{**keyed.config.to_dict(), "key_id": None}))
    with pytest.raises(ExportError, match="no key_id"):
        export_vit(unkeyed, tmp_path / "new")


# -- transformers versions ------------------------------------------------------------------------------------------
def test_version_check_names_the_version_and_the_standard_export():
    check_transformers_version("5.24.0")
    check_transformers_version("5.25.0.dev0")
    for old in ("4.57.6", "5.23.1"):
        with pytest.raises(ImportError, match=r"transformers>=5\.24 \(installed: " + old.replace(".", r"\.")) as err:
            check_transformers_version(old)
        assert "--format vit" in str(err.value) and "\n" not in str(err.value)


_OLD_TRANSFORMERS = textwrap.dedent(
    """
    import sys
    sys.modules["hf_lcrypt"] = None
    from transformers import {cls}
    import transformers
    transformers.__version__ = "5.23.0"
    try:
        {cls}.from_pretrained(sys.argv[1], trust_remote_code=True)
    except Exception as err:
        print(type(err).__name__, err, sep=": ")
    """
)


@pytest.mark.parametrize("cls", ["AutoModelForImageClassification", "AutoImageProcessor", "AutoConfig"])
def test_remote_code_on_an_older_transformers_raises_one_line(model_dir, cls, tmp_path):
    run = run_fresh_python(_OLD_TRANSFORMERS.format(cls=cls), model_dir, cwd=tmp_path)
    line = run.stdout.strip().splitlines()[-1]
    assert line.startswith("ImportError: ") and "transformers>=5.24 (installed: 5.23.0)" in line, line
    assert "hf-lcrypt export MODEL OUT --format vit" in line


def tf4_python() -> Path:
    """The Python of a virtual environment with transformers<5 and this torch (built once, cached outside the repo)."""
    python = TF4_VENV / "bin" / "python"
    if not python.is_file():
        torch_version = torch.__version__.split("+")[0]
        steps = (
            [sys.executable, "-m", "venv", str(TF4_VENV)],
            [str(python), "-m", "pip", "install", "-q", f"torch=={torch_version}"],
            [str(python), "-m", "pip", "install", "-q", "transformers<5", "safetensors", "pillow", "numpy"],
        )
        for step in steps:
            if subprocess.run(step, capture_output=True, timeout=1200).returncode != 0:
                pytest.skip(f"could not build the transformers<5 environment in {TF4_VENV} (no package index?)")
    return python


@pytest.mark.slow
def test_transformers_4_loads_the_export_and_refuses_the_remote_code(keyed, key, model_dir, tmp_path):
    python = tf4_python()
    out = export_vit(keyed, tmp_path / "vit")
    result = check_standard_load(out, keyed, key, python=python)
    assert result["transformers"].startswith("4.")
    assert result["max_logit_diff"] == 0.0 and result["max_logit_diff_processor"] < 1e-4
    for cls in ("AutoModelForImageClassification", "AutoImageProcessor"):
        script = _OLD_TRANSFORMERS.format(cls=cls).replace('transformers.__version__ = "5.23.0"', "")
        line = run_fresh_python(script, model_dir, cwd=tmp_path, python=python).stdout.strip().splitlines()[-1]
        assert line.startswith("ImportError: ") and f"(installed: {result['transformers']})" in line, line


# -- serving either form ----------------------------------------------------------------------------------------------
def test_every_form_classifies_a_ciphertext_as_the_keyed_model(keyed, key, model_dir, tmp_path, capsys, cli_workdir):
    from hf_lcrypt.serving import load_served_model

    forms = {"keyed": model_dir, "vit": export_vit(keyed, tmp_path / "vit")}
    if importlib.util.find_spec("onnxruntime"):
        forms["onnx"] = export_onnx(keyed, tmp_path / "onnx")
    images = ciphertexts(keyed, key, n=3)
    expected = load_served_model(model_dir).logits(images)
    for form, folder in forms.items():
        served = load_served_model(folder)
        assert served.form == form and served.info == load_served_model(model_dir).info
        np.testing.assert_allclose(served.logits(images), expected, atol=1e-4 if form == "onnx" else 1e-5, rtol=0)
    # The key holder's `hf-lcrypt classify --model` runs any of them, with the same answers.
    plain = tmp_path / "scan.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (50, 40, 3), dtype=np.uint8)).save(plain)
    key_file = key.save(tmp_path / "k.key")
    answers = {}
    for form, folder in forms.items():
        rc, out, _ = run_cli(capsys, "classify", "--model", folder, "--key-file", key_file, plain, "--json")
        assert rc == 0, form
        answers[form] = json.loads(out)[0]
    for form, answer in answers.items():
        assert answer["label"] == answers["keyed"]["label"]
        assert answer["confidences"] == pytest.approx(answers["keyed"]["confidences"], abs=1e-5), form


@pytest.mark.slow
def test_the_space_serves_a_standard_export_as_the_remote_code_model(key, tmp_path):
    from gradio_client import handle_file
    from test_space import BLOCK_SIZE, IMAGE_SIZE, launch_space

    from hf_lcrypt.serving import load_served_model

    torch.manual_seed(0)  # launch_space folds the same tiny ViT with the same key
    plain = tiny_vit(image_size=IMAGE_SIZE, patch_size=BLOCK_SIZE)
    keyed = LCryptViTForImageClassification.from_plain(plain, key, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    export = export_vit(keyed, tmp_path / "vit")
    path = tmp_path / "scan.enc.png"
    ciphertexts(keyed, key, n=1)[0].save(path)
    for space in launch_space(tmp_path / "space", key, env={"HF_LCRYPT_MODEL": str(export)}):
        client = space.client()
        info = client.predict(api_name="/model_info")
        label = client.predict(handle_file(str(path)), api_name="/classify_encrypted")
    assert info["key_id"] == key.key_id and info["image_size"] == [IMAGE_SIZE, IMAGE_SIZE]
    remote_code = load_served_model(tmp_path / "space" / "model").probabilities(Image.open(path))
    served = {c["label"]: c["confidence"] for c in label["confidences"]}
    assert label["label"] == max(remote_code, key=remote_code.get)
    assert served == pytest.approx(remote_code, abs=1e-6)
    assert "Serving" in (tmp_path / "space" / "space.log").read_text()


def test_publish_format_vit_checks_the_standard_export(keyed, key, model_dir, tmp_path, capsys, cli_workdir):
    (model_dir / "training.key").write_text(key.to_hex())  # left behind: the export is written anew
    key_file = key.save(tmp_path / "k.key")
    out = tmp_path / "dry"
    argv = ["publish", model_dir, "--repo-id", "someone/keyed-vit", "--key-file", key_file, "--format", "vit"]
    rc, text, err = run_cli(capsys, *argv, "--dry-run", out)
    assert rc == 0, err
    assert "max difference 0" in text and "training.key" in text  # listed as left out
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "weights_only_attack.json",  # the weights gate, as for the keyed model
    ]
    assert json.loads((out / "config.json").read_text())["model_type"] == "vit" and find_secrets(out, key) == []
    assert "gate" in json.loads((out / "weights_only_attack.json").read_text())
    assert 'pipeline("image-classification", model="someone/keyed-vit")' in (out / "README.md").read_text()


@pytest.mark.slow
def test_bench_export_prints_both_runtimes_and_their_ratio(tmp_path):
    pytest.importorskip("onnxruntime")
    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_export.py"
    flags = ["--models", "micro", "--batch", "4", "--rounds", "2", "--threads", "1"]
    run = subprocess.run(
        [sys.executable, str(script), *flags], capture_output=True, text=True, timeout=600, cwd=tmp_path, check=True
    )
    assert "micro (0.8 M parameters, 28x28 in blocks of 4):" in run.stdout
    for arm in ("pytorch", "onnxruntime"):  # each timed (the numbers are for people to read, not asserted)
        line = next(line for line in run.stdout.splitlines() if line.strip().startswith(f"{arm}:"))
        assert float(line.split()[1]) > 0, line
    assert float(run.stdout.split("ratio onnxruntime / pytorch: ")[1].split(";")[0]) > 0
    assert float(run.stdout.split("max logit difference ")[1].split()[0]) <= 1e-4  # the same model in both


_STANDALONE_SERVER = textwrap.dedent(
    """
    import importlib.util, json, sys
    sys.modules["hf_lcrypt"] = None  # a server without hf-lcrypt, with serving.py copied alone
    from PIL import Image
    spec = importlib.util.spec_from_file_location("serving", sys.argv[1])
    serving = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serving)
    served = serving.load_served_model(sys.argv[2])
    print(json.dumps({"form": served.form, "probs": served.probabilities(Image.open(sys.argv[3]))}))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("form", ["vit", "onnx"])
def test_serving_py_alone_serves_an_export_without_hf_lcrypt(keyed, key, form, tmp_path):
    from hf_lcrypt import serving

    if form == "onnx":
        pytest.importorskip("onnxruntime")
    out = (export_vit if form == "vit" else export_onnx)(keyed, tmp_path / form)
    path = tmp_path / "scan.enc.png"
    ciphertexts(keyed, key, n=1)[0].save(path)
    run = run_fresh_python(_STANDALONE_SERVER, serving.__file__, out, path, cwd=tmp_path)
    answer = json.loads(run.stdout.strip().splitlines()[-1])
    expected = serving.load_served_model(out).probabilities(Image.open(path))
    assert answer["form"] == form and answer["probs"] == pytest.approx(expected, abs=1e-6)
