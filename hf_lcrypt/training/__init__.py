"""Train and evaluate a keyed image classifier with the `transformers` Trainer (`scripts/train.py`, `hf-lcrypt train`).

Three modes (`--mode`):
- `encrypted`: the model only ever sees images encrypted with the key. A ViT starts from the folded copy of its
  initialisation (random, or a plain checkpoint given by `--from_plain`), so the key is in its weights from step 0;
  a model that cannot absorb a key (a CNN preset) simply learns on the ciphertext.
- `fold`: a plain ViT trains on plain images; then the key is folded into its weights, which changes no prediction:
  the run checks that the keyed model on encrypted test images reproduces the plain model on plain ones.
- `plain`: the baseline, the same pipeline with an identity cipher.

Where things are: `arguments` (the settings, `HfArgumentParser`), `models` (the model, the key, resuming), `data` (the
splits and what metrics.json says of them), `transforms` (the encrypting datasets transform, mixup), `trainer`
(datasets, callbacks, the Trainer), `scoring` (the test split through `Trainer.predict`, then the attacks), `record`
(metrics.json) and `run` (the orchestration); and what only training uses: `presets` (model sizes), `distillation`,
`weight_averaging` (EMA), `evaluation` and `metrics/` (metric scripts, the confusion matrix). Augmentation of plain
images is in `hf_lcrypt.plain_augment`, which the data owner's `encrypt-dataset` shares.
"""

from .arguments import (
    AttackArguments,
    CipherArguments,
    DataArguments,
    DistillationArguments,
    LCryptTrainingArguments,
    ModelArguments,
    RunArguments,
    build_parser,
    parse_args,
)
from .models import HALF, default_block_size, load_or_create_key, secret_init_seed
from .record import RunMetrics
from .run import TrainResult, main, run

__all__ = [
    "HALF",
    "AttackArguments",
    "CipherArguments",
    "DataArguments",
    "DistillationArguments",
    "LCryptTrainingArguments",
    "ModelArguments",
    "RunArguments",
    "RunMetrics",
    "TrainResult",
    "build_parser",
    "default_block_size",
    "load_or_create_key",
    "main",
    "parse_args",
    "run",
    "secret_init_seed",
]
