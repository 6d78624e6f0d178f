"""The checks every repository folder passes before an upload: a fresh Python process with transformers alone
loads the model and reproduces the logits, the card's metadata reads back unchanged, and no file holds the key in
any common encoding."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import torch
from huggingface_hub.repocard import RepoCard
from PIL import Image

from ..cipher import size_pair
from ..image_processing_lcrypt import LCryptImageProcessor
from ..keys import KEY_ENV_VAR, LCryptKey
from ..modeling_lcrypt import LCryptViTForImageClassification


class SecretLeakError(RuntimeError):
    """A file that was about to be published contains the secret key."""


def check_card_round_trip(path: Path, card: RepoCard) -> None:
    """The saved card's metadata must read back as written (YAML can silently change types or drop entries)."""
    loaded = type(card).load(path)
    if loaded.data.to_dict() != card.data.to_dict():
        raise ValueError(f"The metadata of {path} does not read back as written; check the values passed to the card.")


# -- secret scan --------------------------------------------------------------------------------------------------
def secret_patterns(key: LCryptKey) -> dict[str, bytes]:
    """The encodings of the key a careless file might contain: raw, hex (matched case-insensitively), base64."""
    raw = key.to_bytes()
    return {
        "raw bytes": raw,
        "hex": key.to_hex().encode(),
        "base64": base64.b64encode(raw).rstrip(b"="),
        "url-safe base64": base64.urlsafe_b64encode(raw).rstrip(b"="),
    }


def find_secrets(folder: str | os.PathLike, key: LCryptKey, chunk_size: int = 8 << 20) -> list[tuple[Path, str]]:
    """Every (file, encoding) under `folder` whose name or content holds the key; files are read in chunks."""
    patterns = secret_patterns(key)
    overlap = max(len(p) for p in patterns.values()) - 1
    hits: list[tuple[Path, str]] = []
    for path in sorted(Path(folder).rglob("*")):
        if not path.is_file():
            continue
        found: set[str] = {name for name, p in patterns.items() if name != "raw bytes" and p in path.name.encode()}
        with path.open("rb") as f:
            tail = b""
            while chunk := f.read(chunk_size):
                window = tail + chunk
                lowered = window.lower()
                for name, pattern in patterns.items():
                    if (lowered if name == "hex" else window).find(pattern) >= 0:
                        found.add(name)
                tail = window[-overlap:]
        hits.extend((path, name) for name in sorted(found))
    return hits


def check_no_secrets(folder: str | os.PathLike, key: LCryptKey) -> None:
    """Refuse to go on if any file in `folder` holds the key."""
    hits = find_secrets(folder, key)
    if hits:
        listing = "; ".join(f"{path.relative_to(folder)} ({encoding})" for path, encoding in hits)
        raise SecretLeakError(
            f"Refusing to publish: the secret key (key_id {key.key_id}) is in {listing}. Remove it from the source "
            "folder, and treat the key as exposed if that folder was ever shared."
        )


def _run_fresh(
    script: str,
    args: list[str | os.PathLike],
    tmp_path: Path,
    env: dict[str, str],
    python: str | os.PathLike | None = None,
) -> subprocess.CompletedProcess:
    """Run `script` in a fresh Python (`python`, default this one), offline, in `tmp_path` with its own Hugging Face
    cache there, without this process's HF_LCRYPT_ variables or PYTHONPATH; `env` adds variables."""
    base = {name: value for name, value in os.environ.items() if not name.startswith("HF_LCRYPT_")}
    base.update({"HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""})
    base["TRANSFORMERS_VERBOSITY"] = "error"
    return subprocess.run(
        [str(python or sys.executable), "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        env={**base, **env},
        cwd=tmp_path,
        timeout=600,
    )


_REMOTE_CHECK = textwrap.dedent(
    """
    import json, sys
    sys.modules["hf_lcrypt"] = None  # only transformers and the repository's own code
    import numpy as np, torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    folder, images_path, encrypt = sys.argv[1], sys.argv[2], sys.argv[3] == "encrypt"
    images = [Image.fromarray(a) for a in np.load(images_path)]
    processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)  # key: the environment's key file
    model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
    with torch.no_grad():
        logits = model(**processor(images, return_tensors="pt", do_encrypt=encrypt)).logits
    print(json.dumps({"model_class": type(model).__name__, "processor_class": type(processor).__name__,
                      "module": type(model).__module__, "logits": logits.tolist()}))
    """
)


def check_remote_load(
    folder: str | os.PathLike, key: LCryptKey | None, num_images: int = 3, seed: int = 0, atol: float = 1e-4
) -> float:
    """Load `folder` in a fresh process where hf_lcrypt cannot be imported and compare its logits on a few seeded
    random images with this process's; returns the largest difference.

    The key reaches the child through a 0600 key file named by HF_LCRYPT_KEY_FILE, never through its command line.
    Without a key (a model trained on ciphertexts by someone who never held it) the random images stand for
    ciphertexts, and both processes feed them with `do_encrypt=False`.
    """
    folder = Path(folder).resolve()
    model = LCryptViTForImageClassification.from_pretrained(folder).eval()
    processor = LCryptImageProcessor.from_pretrained(folder, key=key)
    height, width = size_pair(model.config.image_size)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (num_images, height + 5, width + 7, 3), dtype=np.uint8)  # exercises the resize
    pil_images = [Image.fromarray(a) for a in images]
    with torch.no_grad():
        local = model(**processor(pil_images, return_tensors="pt", do_encrypt=key is not None)).logits
    with tempfile.TemporaryDirectory(prefix="hf-lcrypt-check-") as tmp:
        tmp_path = Path(tmp)
        np.save(tmp_path / "images.npy", images)
        env = {KEY_ENV_VAR: str(key.save(tmp_path / "check.key"))} if key is not None else {}
        mode = "encrypt" if key is not None else "as-is"
        run = _run_fresh(_REMOTE_CHECK, [folder, tmp_path / "images.npy", mode], tmp_path, env=env)
    if run.returncode != 0:
        raise RuntimeError(
            f"The repository folder {folder} does not load with transformers alone (trust_remote_code):\n"
            f"{run.stderr[-3000:]}"
        )
    remote = json.loads(run.stdout.strip().splitlines()[-1])
    if remote["model_class"] != type(model).__name__ or remote["module"].startswith("hf_lcrypt"):
        raise RuntimeError(f"The fresh process loaded {remote['module']}.{remote['model_class']}, not the remote code.")
    remote_logits = torch.tensor(remote["logits"])
    if remote_logits.shape != local.shape:
        raise RuntimeError(f"Remote logits have shape {tuple(remote_logits.shape)}, expected {tuple(local.shape)}.")
    diff = float((remote_logits - local).abs().max())
    if diff > atol:
        raise RuntimeError(
            f"The model loaded from {folder} by transformers alone gives different logits (max difference {diff:.3g})."
        )
    return diff


_STANDARD_CHECK = textwrap.dedent(
    """
    import json, sys
    sys.modules["hf_lcrypt"] = None  # a server without hf-lcrypt
    import numpy as np, torch, transformers
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    folder, data = sys.argv[1], np.load(sys.argv[2])
    model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=False).eval()
    processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=False)
    ciphertexts = [Image.fromarray(a) for a in data["ciphertexts"]]
    with torch.no_grad():
        same_inputs = model(pixel_values=torch.from_numpy(data["pixel_values"])).logits
        processed = model(**processor(ciphertexts, return_tensors="pt")).logits
    print(json.dumps({"model_class": type(model).__name__, "module": type(model).__module__,
                      "transformers": transformers.__version__, "same_inputs": same_inputs.tolist(),
                      "processed": processed.tolist()}))
    """
)


def check_standard_load(
    folder: str | os.PathLike,
    model: LCryptViTForImageClassification,
    key: LCryptKey | None,
    python: str | os.PathLike | None = None,
    num_images: int = 3,
    seed: int = 0,
    atol: float = 1e-4,
) -> dict[str, float | str]:
    """Load the standard (`vit`) export in `folder` in a fresh process (`python`, default this one) without
    hf-lcrypt and without remote code, and compare with the keyed `model` on ciphertexts of seeded random images.

    The export must give exactly the keyed model's logits on the same pixel values, and logits within `atol` when its
    own `ViTImageProcessor` prepares the ciphertexts. Returns both differences and the child's transformers version.
    The key encrypts the images here (the child never gets it); without one, the random images stand for ciphertexts.
    """
    folder = Path(folder).resolve()
    if any(folder.glob("*.py")):
        raise RuntimeError(f"{folder} holds Python files; a standard export must load without remote code.")
    model = model.eval()
    height, width = size_pair(model.config.image_size)
    rng = np.random.default_rng(seed)
    ciphertexts = rng.integers(0, 256, (num_images, height, width, 3), dtype=np.uint8)
    if key is not None:
        encrypted = LCryptImageProcessor.for_model(model, key=key).encrypt_images(list(ciphertexts))
        ciphertexts = np.stack([np.asarray(image) for image in encrypted])
    server = LCryptImageProcessor.for_model(model)  # what a remote-code server does with ciphertexts
    pixel_values = server(list(ciphertexts), do_encrypt=False, do_resize=False, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        local = model(pixel_values=pixel_values).logits
    with tempfile.TemporaryDirectory(prefix="hf-lcrypt-check-") as tmp:
        tmp_path = Path(tmp)
        np.savez(tmp_path / "inputs.npz", ciphertexts=ciphertexts, pixel_values=pixel_values.numpy())
        # The same thread count as here, so that the matrix products sum in the same order.
        threads = {"OMP_NUM_THREADS": str(torch.get_num_threads())}
        run = _run_fresh(_STANDARD_CHECK, [folder, tmp_path / "inputs.npz"], tmp_path, env=threads, python=python)
    if run.returncode != 0:
        raise RuntimeError(f"The export in {folder} does not load without remote code:\n{run.stderr[-3000:]}")
    child = json.loads(run.stdout.strip().splitlines()[-1])
    if child["model_class"] != "ViTForImageClassification" or not child["module"].startswith("transformers."):
        raise RuntimeError(f"The fresh process loaded {child['module']}.{child['model_class']}, not transformers' ViT.")
    exact = float((torch.tensor(child["same_inputs"]) - local).abs().max())
    processed = float((torch.tensor(child["processed"]) - local).abs().max())
    if exact != 0.0 or processed > atol:
        raise RuntimeError(
            f"The export in {folder} gives other logits than the keyed model (max difference {exact:.3g} on the same "
            f"inputs, {processed:.3g} through its own processor)."
        )
    return {"max_logit_diff": exact, "max_logit_diff_processor": processed, "transformers": child["transformers"]}


# -- the key in the weights ---------------------------------------------------------------------------------------
WEIGHTS_ONLY_FILE = "weights_only_attack.json"
ALLOW_FLAG = "--allow-leaky-weights"
# What the check and the card read from a weights-only attack result.
_MEASURED = {
    f"{prefix}{name}"
    for name in ("flips_right", "pixel_neighbours_kept", "block_neighbours_kept")
    for prefix in ("", "chance_")
} | {"pixels_in_place", "blocks_in_place"}


class LeakyWeightsError(ValueError):
    """The weights alone give part of the key away (docs/security.md), and publishing them was not allowed."""


class UnmeasuredWeightsError(ValueError):
    """No key and no key holder's measurement: what the weights give away is unknown, and publishing was not allowed."""


def check_weights_keep_the_key(
    folder: str | os.PathLike, key: LCryptKey | None = None, *, allow_leak: bool = False
) -> dict:
    """Judge whether a keyed model folder's weights alone give away the key's flips or pixel layout above chance.

    Reads the folder's weights_only_attack.json (`--attack_weights_only`, `hf-lcrypt attack --weights-only`), or runs
    the attack with `key` and writes the file there. Adds the verdict (`gate`: thresholds, the scores above them, and
    whether publishing anyway was allowed) to the file, which the model card quotes, and returns it. Raises
    `LeakyWeightsError` for leaky weights unless `allow_leak`.
    """
    from ..attacks.weights_only import leak_thresholds, weights_leak, weights_only_scores

    folder = Path(folder)
    path = folder / WEIGHTS_ONLY_FILE
    model = LCryptViTForImageClassification.from_pretrained(folder)
    scores = json.loads(path.read_text()) if path.is_file() else {}
    if not set(scores) >= _MEASURED:  # none, or written by an older version
        if key is None and allow_leak:
            # A trainer who never held the key cannot score the weights: published unmeasured, and the card says so.
            scores = {"gate": {"measured": False, "leaks": [], "published_despite_leak": False}}
            path.write_text(json.dumps(scores, indent=2) + "\n")
            return scores
        if key is None:
            raise UnmeasuredWeightsError(
                f"What {folder.name}'s weights alone give away of the key is measured only with the key (no "
                f"{WEIGHTS_ONLY_FILE}): the key holder runs `hf-lcrypt attack --model MODEL_FOLDER --key-file KEY "
                f"--data PLAIN_IMAGES` and hands the folder back, or pass {ALLOW_FLAG} (train.py: "
                "--allow_leaky_weights) to publish with a card that says the leakage was not measured."
            )
        scores = {**scores, **weights_only_scores(model, model.cipher(key))}
    thresholds = leak_thresholds(model.cipher(LCryptKey(bytes(32))))  # chance depends on the geometry alone
    leaks = weights_leak(scores, thresholds)
    scores["gate"] = {"measured": True, "thresholds": thresholds, "leaks": leaks, "published_despite_leak": bool(leaks)}
    if leaks and not allow_leak:
        found = ", ".join(f"{name} {scores[name]:.2f} (chance {scores[f'chance_{name}']:.2f})" for name in leaks)
        raise LeakyWeightsError(
            f"{folder}'s weights alone give part of its key away ({found}; docs/security.md). Train it from scratch "
            f"with the default --embedding_init_scale, or pass {ALLOW_FLAG} to publish it anyway (the card says so)."
        )
    path.write_text(json.dumps(scores, indent=2) + "\n")
    return scores
