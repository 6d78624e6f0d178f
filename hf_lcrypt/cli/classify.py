"""`hf-lcrypt classify`: encrypt here, classify there (a model server) or here (a local model)."""

from __future__ import annotations

import argparse
import sys
import textwrap

from .options import add_command, add_key_file_argument, medical_options, positive_int


def add_classify(sub: argparse._SubParsersAction) -> None:
    parser = add_command(
        sub,
        "classify",
        run_classify,
        "classify images: encrypted here, sent as ciphertext to a model server (or run locally)",
        "Classify images with a keyed model while the plain images and the key stay on this machine: each image "
        "is resized and encrypted here, exactly as the model's processor does, and only the encrypted PNG is "
        "sent to the app at --url (space/app.py, locally or on the Hub), which returns the classes. With --model "
        "DIR, the keyed model runs on this machine instead. Prints one line per image, or JSON with --json.",
        epilog=textwrap.dedent(
            """\
            examples:
              hf-lcrypt classify --url http://127.0.0.1:7860/ --key-file hospital.key scans/
              hf-lcrypt classify --url user/space-name --key-file hospital.key scan1.png scan2.jpg --json
              hf-lcrypt classify --model outputs/run/model --key-file outputs/run.key scans/ --top 3
            """
        ),
        parents=[medical_options()],
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="address of a running hf-lcrypt app (or a Space id): gets ciphertext only")
    where.add_argument("--model", metavar="DIR", help="a keyed model folder to run on this machine instead")
    add_key_file_argument(parser, "key file the model is folded with; never sent anywhere")
    parser.add_argument(
        "images", nargs="+", metavar="IMAGES", help="image files (also DICOM and NIfTI), or folders of images"
    )
    parser.add_argument("--json", action="store_true", help="print the predictions as JSON")
    parser.add_argument("--top", type=positive_int, default=1, help="classes per image in the table (default: 1)")


def run_classify(args: argparse.Namespace) -> int:
    import json

    from ..keys import LCryptKey
    from ..medical_io import MedicalOptions
    from .client import LocalClassifier, RemoteClassifier, expand_images, format_table

    key = LCryptKey.load(args.key_file)
    images = expand_images(args.images, MedicalOptions(args.window, args.keep_bits, args.axis))
    classifier = RemoteClassifier(args.url, key) if args.url else LocalClassifier(args.model, key)
    predictions = classifier.classify(images, progress=True)
    if args.json:
        print(json.dumps([p.to_dict() for p in predictions], indent=2))
    else:
        print(format_table(predictions, args.top))
    failed = [p for p in predictions if p.error is not None]
    if failed:
        print(f"hf-lcrypt classify: {len(failed)} of {len(predictions)} image(s) could not be read:", file=sys.stderr)
        for prediction in failed:
            print(f"  {prediction.image}: {prediction.error}", file=sys.stderr)
        return 1
    return 0
