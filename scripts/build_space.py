"""Assemble the Gradio Space's repository folder: the app and its page (space/), a keyed model, optionally a PUBLIC
demo key and example images of the model's own data.

    python scripts/build_space.py outputs/breastmnist-encrypted/model OUT \
        --key-file outputs/breastmnist-encrypted.key --demo-key --examples EXAMPLES_DIR
    HF_HUB_OFFLINE=1 python OUT/app.py        # or upload OUT as a Gradio Space

--demo-key makes a fresh key, publishes it as OUT/demo.key and moves a COPY of the model to it (model.rekey, exact:
the same predictions for images encrypted with the demo key as the original gives under its own key). Neither the
training key nor the weights folded with it leave this machine; the key file named by --key-file is read, never
copied. --demo-key FILE publishes that key instead; the model's own key is refused unless --publish-model-key says
that key is meant to be public. Without --demo-key, the Space serves the model as it is and visitors bring its key.

Examples come only from --examples (images of the model's own dataset, e.g. a few test images); without it the page
offers none.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from hf_lcrypt.hub.checks import SecretLeakError, check_no_secrets, check_weights_keep_the_key
from hf_lcrypt.hub.publish import stage_model_folder
from hf_lcrypt.keys import LCryptKey

SPACE = Path(__file__).resolve().parents[1] / "space"
SPACE_FILES = ("app.py", "README.md", "requirements.txt", "static")
EXAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_EXAMPLES = 8
NEW_KEY = "new"  # --demo-key without a file


def build_space(
    model_dir: Path,
    out: Path,
    demo_key: LCryptKey | None = None,
    *,
    model_key: LCryptKey | None = None,
    examples: Path | None = None,
    publish_model_key: bool = False,
    allow_leaky_weights: bool = False,
) -> list[str]:
    """Write the Space into `out` (which must not exist yet); returns the files written, relative to `out`.

    With a `demo_key` other than the model's, the copied model is rekeyed to it, which needs `model_key`; the
    model's own key is published only with `publish_model_key`. The weights pass `hf-lcrypt publish`'s check of what
    they alone give away of their key, unless `allow_leaky_weights`. Nothing is left behind on failure.
    """
    if out.exists():
        raise FileExistsError(f"{out} exists; choose a new folder for the Space.")
    example_files = _example_files(examples) if examples is not None else []
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        _copy_app(staging)
        model = staging / "model"
        model.mkdir()
        stage_model_folder(model_dir, model)
        if demo_key is not None:
            model_key_id = _read_json(model / "config.json").get("key_id")
            if demo_key.key_id == model_key_id and not publish_model_key:
                raise ValueError(
                    f"The demo key is the model's own key (key_id {model_key_id}): publishing it gives away the key "
                    "the model was trained with. Use --demo-key without a file (a fresh key, the model moved to it), "
                    "or --publish-model-key if that key is public anyway."
                )
            if demo_key.key_id != model_key_id:
                rekey_model_folder(model, model_key, demo_key)
            (staging / "demo.key").write_text(demo_key.to_hex() + "\n")
        check_weights_keep_the_key(model, demo_key or model_key, allow_leak=allow_leaky_weights)
        if model_key is not None and (demo_key is None or demo_key.key_id != model_key.key_id):
            check_no_secrets(staging, model_key)
        if example_files:
            (staging / "examples").mkdir()
            for path in example_files:
                shutil.copy2(path, staging / "examples" / path.name)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())


def _copy_app(folder: Path) -> None:
    for name in SPACE_FILES:
        source = SPACE / name
        if source.is_dir():
            shutil.copytree(source, folder / name)
        else:
            shutil.copy2(source, folder / name)


def _example_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.glob("*") if p.is_file() and p.suffix.lower() in EXAMPLE_SUFFIXES)
    if not files:
        raise ValueError(f"--examples {folder} holds no PNG or JPEG image; name a folder of the model's own images.")
    if len(files) > MAX_EXAMPLES:
        raise ValueError(f"--examples {folder} holds {len(files)} images; a page offers at most {MAX_EXAMPLES}.")
    return files


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def rekey_model_folder(folder: Path, model_key: LCryptKey | None, new_key: LCryptKey) -> None:
    """Move the keyed model in `folder` to `new_key` in place (weights, config, processor config, the key_id the
    run's records name), with `model.rekey`: the predictions stay exactly those of the original under its key."""
    from hf_lcrypt import LCryptViTForImageClassification

    old_key_id = _read_json(folder / "config.json").get("key_id")
    if model_key is None:
        raise ValueError(
            f"Moving the model to the demo key needs the key it is folded with (key_id {old_key_id}): pass --key-file."
        )
    model = LCryptViTForImageClassification.from_pretrained(folder)
    model.rekey(new_key, current_key=model_key)  # checks that model_key is the model's
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        for old in folder.glob("*.safetensors*"):
            old.unlink()
        for saved in Path(tmp).iterdir():
            if saved.suffix == ".safetensors" or saved.name in ("config.json", "model.safetensors.index.json"):
                shutil.copy2(saved, folder / saved.name)
    for path in folder.glob("*.json"):
        text = path.read_text()
        if old_key_id and old_key_id in text:
            path.write_text(text.replace(old_key_id, new_key.key_id))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path, help="keyed model folder (weights, config, processor, remote code)")
    parser.add_argument("out", type=Path, help="new folder for the Space's repository")
    parser.add_argument(
        "--demo-key",
        nargs="?",
        const=NEW_KEY,
        metavar="FILE",
        help="publish a PUBLIC demo key: a fresh one (no FILE), the model's copy moved to it; or the key in FILE",
    )
    parser.add_argument(
        "--key-file", type=Path, help="the model's key: read to move the copy to the demo key, never copied"
    )
    parser.add_argument("--examples", type=Path, help=f"folder of up to {MAX_EXAMPLES} images of the model's own data")
    parser.add_argument(
        "--publish-model-key", action="store_true", help="allow --demo-key FILE to be the model's own key (made public)"
    )
    parser.add_argument(
        "--allow-leaky-weights", action="store_true", help="build even if the weights give part of their key away"
    )
    args = parser.parse_args(argv)
    try:
        model_key = LCryptKey.load(args.key_file) if args.key_file else None
        if args.demo_key == NEW_KEY:
            demo_key = LCryptKey.generate()
        else:
            demo_key = LCryptKey.load(args.demo_key) if args.demo_key else None
        files = build_space(
            args.model_dir,
            args.out,
            demo_key,
            model_key=model_key,
            examples=args.examples,
            publish_model_key=args.publish_model_key,
            allow_leaky_weights=args.allow_leaky_weights,
        )
    except (ValueError, OSError, SecretLeakError) as err:
        print(f"build_space: error: {err}", file=sys.stderr)
        return 1
    demo = f" with a PUBLIC demo key (demo.key, key_id {demo_key.key_id})" if demo_key else ""
    print(f"Space in {args.out}{demo}: {len(files)} files. Run it with: python {args.out / 'app.py'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
