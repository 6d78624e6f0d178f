"""`hf-lcrypt train`: the training run of `scripts/train.py`, whose own parser reads every flag."""

from __future__ import annotations

import argparse


def add_train(sub: argparse._SubParsersAction) -> None:
    # Its flags (hf-lcrypt's and every transformers TrainingArguments flag) belong to the HfArgumentParser of
    # hf_lcrypt.training, which also prints `hf-lcrypt train --help`: this parser passes everything through.
    parser = sub.add_parser(
        "train",
        help="train and evaluate a keyed image classifier (`hf-lcrypt train --help` for its flags)",
        add_help=False,
        prefix_chars="+",
    )
    parser.add_argument("train_args", nargs=argparse.REMAINDER)
    parser.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> int:
    """`hf-lcrypt train [CONFIG] [--flag VALUE ...]`, the same as `python scripts/train.py`."""
    from ..training import main as train_main

    return train_main(args.train_args)
