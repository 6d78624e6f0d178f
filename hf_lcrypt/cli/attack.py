"""`hf-lcrypt attack`: the attack suite on a keyed model (or the cipher alone), written as a report."""

from __future__ import annotations

import argparse
import contextlib
import shlex
import tempfile
from collections.abc import Sequence

from .. import DOCS_URL
from ..attacks import ATTACK_NAMES, CIPHER_ATTACKS
from ..keys import ALL_STEPS
from .options import CLIError, add_command, add_key_file_argument, image_size, positive_int, steps


def add_attack(sub: argparse._SubParsersAction) -> None:
    parser = add_command(
        sub,
        "attack",
        run_attack,
        "run the attack suite on a keyed model (or the cipher alone) and write a report",
        "Attack a keyed model and its key on images of --data: robustness to corrupted ciphertext, adversarial "
        "examples (white-box and transferred), int8 weight bit flips (random and searched), key recovery from "
        "the weights, access control, and the cipher attacks (jigsaw, known plaintext, metrics). Writes "
        f"attack_report.json, attack_report.md and PNG figures into --out; see {DOCS_URL}/security.md.",
    )
    parser.add_argument("--data", metavar="DIR", required=True, help="image folder, one sub-folder per class")
    add_key_file_argument(parser, "the key holder's secret key file")
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="folder for the report and figures (optional for a model trained without the key, whose own report "
        "this command completes)",
    )
    parser.add_argument(
        "--model",
        metavar="DIR",
        help="keyed model folder (needed by every attack but the cipher ones). For a model trained without the key, "
        "the checks its report leaves to the key holder (wrong key, plain input, weights only) run by default and "
        "complete the folder's attack_report.json and weights_only_attack.json, which its card and publish read",
    )
    parser.add_argument(
        "--plain-model",
        metavar="DIR",
        help="plain ViT the attacker knows, for transfer and weight attacks (default: the keyed model unfolded "
        "with the key, i.e. the checkpoint it was folded from)",
    )
    parser.add_argument(
        "--attacks",
        metavar="NAME[,NAME...]",
        type=attack_names,
        help=f"comma-separated, run in this order: {','.join(ATTACK_NAMES)} (default: all; without --model: "
        f"{','.join(CIPHER_ATTACKS)})",
    )
    parser.add_argument(
        "--weights-only",
        action="store_true",
        help="run only the attack that guesses the key from the keyed model's weights alone (no image, not the "
        "checkpoint they came from; the key and the images only score it) = --attacks weights-only. With "
        "--plain-model, a plain model the attacker trained on similar images guides the jigsaws. Also writes "
        "weights_only_attack.json into --out (into the model folder itself for a model trained without the key); "
        "in the model folder, the model card quotes it and the publish gate reads it",
    )
    parser.add_argument(
        "--adaptive",
        action="store_true",
        help="with --weights-only: the attacker who knows the key-hiding initialisation, with stronger searches "
        "(every correlation for the flips, scipy's quadratic-assignment solver from many starts for the layouts; "
        "seconds to minutes more) = --attacks weights-only-adaptive",
    )
    parser.add_argument(
        "--max-images", metavar="N", type=positive_int, default=128, help="images sampled (default 128)"
    )
    parser.add_argument("--split", default="test", help="split of --data, carved by content hash (default: test)")
    parser.add_argument("--image-size", metavar="S|HxW", type=image_size, help="cipher geometry without --model")
    parser.add_argument("--block-size", metavar="M", type=positive_int, help="block side without --model")
    parser.add_argument(
        "--steps", metavar="STEP[,STEP...]", type=steps, default=ALL_STEPS, help="cipher steps without --model"
    )
    parser.add_argument("--batch-size", metavar="B", type=positive_int, default=64, help="images per forward pass")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, the image sample and the attacks")


def attack_names(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in ATTACK_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown attack(s) {', '.join(unknown)}; choose from {', '.join(ATTACK_NAMES)}"
        )
    return names


def run_attack(args: argparse.Namespace) -> int:
    from ..attacks.key_holder import complete_report, default_attacks, pending_conditions
    from ..attacks.record import AttackReport
    from ..attacks.report import load_sample, run_report
    from ..keys import LCryptKey

    pending = pending_conditions(args.model) if args.model else {}
    if args.out is None and not pending:
        raise CLIError("--out is needed: name the folder for the report and figures.")
    key = LCryptKey.load(args.key_file)
    if args.weights_only and args.attacks not in (None, ("weights-only",)):
        raise CLIError("--weights-only runs one attack; leave out --attacks, or name weights-only there instead.")
    if args.adaptive and not args.weights_only:
        raise CLIError("--adaptive strengthens --weights-only; add --weights-only, or name weights-only-adaptive.")
    weights_only = ("weights-only-adaptive" if args.adaptive else "weights-only",)
    default = default_attacks(args.model) if pending else ATTACK_NAMES if args.model else CIPHER_ATTACKS
    attacks = weights_only if args.weights_only else args.attacks or default
    sample, sources = load_sample(
        args.data,
        key,
        args.model,
        args.plain_model,
        args.image_size,
        args.block_size,
        args.steps,
        args.split,
        args.max_images,
        args.seed,
    )
    sample.batch_size = args.batch_size
    with contextlib.ExitStack() as stack:
        out = args.out or stack.enter_context(tempfile.TemporaryDirectory(prefix="hf-lcrypt-attack-"))
        paths = run_report(sample, attacks, out, sources, command=attack_command(args, attacks))
        report = AttackReport.read(paths["json"])
        done = complete_report(args.model, report.attacks, report.sources) if pending else []
    where = paths["md"] if args.out else ", ".join(str(p) for p in done)
    print(f"attacked key {key.key_id} with {', '.join(attacks)} on {len(sample.images)} images: {where}")
    if done:
        left = pending_conditions(args.model)
        print(f"completed {args.model}'s report" + (f"; still for the key holder: {', '.join(left)}" if left else ""))
    return 0


def attack_command(args: argparse.Namespace, attacks: Sequence[str]) -> str:
    """The command line that reproduces an attack report (the key file's path only, never its content)."""
    words = ["hf-lcrypt", "attack", "--data", args.data, "--key-file", args.key_file]
    words += ["--out", args.out] if args.out else []
    for flag in ("model", "plain_model", "image_size", "block_size", "split", "max_images", "seed"):
        value = getattr(args, flag)
        if value is not None:
            text = "x".join(map(str, value)) if isinstance(value, tuple) else str(value)
            words += [f"--{flag.replace('_', '-')}", text]
    if args.model is None:
        words += ["--steps", ",".join(args.steps)]
    return shlex.join([*words, "--attacks", ",".join(attacks)])
