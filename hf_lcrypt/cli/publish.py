"""`hf-lcrypt publish`: check a trained keyed model and upload it to the Hub."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from .options import CLIError, add_command, add_key_file_argument


def add_publish(sub: argparse._SubParsersAction) -> None:
    parser = add_command(
        sub,
        "publish",
        run_publish,
        "check a trained keyed model and upload it to the Hugging Face Hub",
        "Build the model repository from MODEL_DIR (weights, config, remote code, processor, model card, metrics "
        "and plots), check it (a fresh process with transformers alone reproduces the logits, the card's "
        "metadata reads back, no file holds the key) and upload it; with --dry-run, only write and check it.",
    )
    parser.add_argument(
        "model_dir",
        metavar="MODEL_DIR",
        type=Path,
        help="folder of the trained keyed model (config, weights, processor)",
    )
    parser.add_argument("--repo-id", required=True, help="Hub repository, e.g. user/keyed-vit")
    add_key_file_argument(
        parser,
        "key the model is folded with, used only for the checks (a trainer who never held it leaves it out: the "
        "weights check then reads the key holder's weights_only_attack.json)",
    )
    parser.set_defaults(needs_key_file=trained_with_the_key)
    parser.add_argument(
        "--dry-run", type=Path, metavar="OUT_DIR", help="write and check the repository here, upload nothing"
    )
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument(
        "--folded-from-public",
        action="store_true",
        help="the weights are a public checkpoint with a key folded in (the key is then recoverable; warns)",
    )
    parser.add_argument(
        "--allow-leaky-weights",
        action="store_true",
        help="publish even if the weights alone give the key's flips or pixel layout away above chance (measured "
        "from weights_only_attack.json, or now with the key), or, without the key and that file, unmeasured; the "
        "card then says so",
    )
    parser.add_argument("--license", default="apache-2.0", help="licence for the card (default: apache-2.0)")
    parser.add_argument("--dataset", help="Hub id or name of the training data, for the card")
    parser.add_argument("--base-model", help="Hub id of the plain model the keyed one was made from, for the card")
    parser.add_argument(
        "--format",
        choices=("keyed", "vit"),
        default="keyed",
        help="keyed (default): the model with its remote code; vit: its standard export (hf-lcrypt export), checked "
        "by a fresh process that loads it without remote code and must give the same logits",
    )


def trained_with_the_key(args: argparse.Namespace) -> bool:
    """Publishing needs the key (for the secret scan and the weights check) unless the model's metrics.json says it
    was trained on ciphertexts by someone who never held it."""
    import json

    try:
        return not json.loads((args.model_dir / "metrics.json").read_text()).get("trained_without_key")
    except (OSError, ValueError, AttributeError):
        return True


def run_publish(args: argparse.Namespace) -> int:
    from ..hub.checks import SecretLeakError
    from ..hub.publish import PublicCheckpointWarning, publish_model
    from ..keys import LCryptKey

    warnings.simplefilter("always", PublicCheckpointWarning)
    try:
        result = publish_model(
            args.model_dir,
            args.repo_id,
            LCryptKey.load(args.key_file) if args.key_file else None,
            dry_run_dir=args.dry_run,
            private=args.private,
            folded_from_public=args.folded_from_public,
            license=args.license,
            dataset=args.dataset,
            base_model=args.base_model,
            format=args.format,
            allow_leaky_weights=args.allow_leaky_weights,
        )
    except (SecretLeakError, RuntimeError) as err:
        raise CLIError(str(err)) from err
    print(f"Checked {len(result.files)} files: {', '.join(result.files)}")
    if result.skipped:
        print(f"Left out: {', '.join(result.skipped)}")
    print(f"Fresh-process logits match (max difference {result.max_logit_diff:.2g}); no secret in any file.")
    scores, gate = result.weights_only, result.weights_only["gate"]
    if not gate.get("measured", True):
        print("Weights alone: NOT measured (trained without the key), published as allowed; the card says so")
    else:
        print(
            f"Weights alone: {scores['flips_right']:.2f} of the flips (chance {scores['chance_flips_right']:.2f}), "
            f"pixel neighbours {scores['pixel_neighbours_kept']:.2f} (chance "
            f"{scores['chance_pixel_neighbours_kept']:.2f}); "
            + (f"ABOVE CHANCE ({', '.join(gate['leaks'])}), published as allowed" if gate["leaks"] else "at chance")
        )
    print(f"Dry run: the repository is in {result.folder}" if result.url is None else f"Uploaded to {result.url}")
    return 0
