"""Every setting of a recorded run by its flag name, from its `metrics.json`, whichever interface recorded it.

Runs trained since `scripts/train.py` took `transformers.TrainingArguments` keep hf-lcrypt's own settings in
`config` and the Trainer's in `training_args`; earlier runs kept all of them in `config`, some under names since
renamed (CHANGELOG.md). The tables of experiments/ read both through `recorded_settings`, under the current names, so
that old and new runs compare and print as current commands. No torch or transformers here: a table of finished
runs loads neither.
"""

from typing import Any

# Old settings that are now `TrainingArguments` fields under another name.
RENAMED = {
    "epochs": "num_train_epochs",
    "lr": "learning_rate",
    "warmup": "warmup_steps",
    "label_smoothing": "label_smoothing_factor",
    "metric": "metric_for_best_model",
    "num_proc": "dataloader_num_workers",
}


def recorded_settings(metrics: dict[str, Any]) -> dict[str, Any]:
    """A run's settings by current flag name (without underscores turned into dashes)."""
    if "training_args" in metrics:
        return {**metrics["config"], **metrics["training_args"]}
    settings: dict[str, Any] = {}
    for name, value in metrics["config"].items():
        if name == "batch_size":  # it set both
            settings["per_device_train_batch_size"] = settings["per_device_eval_batch_size"] = value
        elif name == "eval_steps":  # None: once per epoch, the default
            if value is not None:
                settings.update(eval_strategy="steps", eval_steps=value, save_strategy="steps", save_steps=value)
        elif name == "max_steps":
            settings[name] = -1 if value is None else value
        elif name == "report_to":  # as TrainingArguments records it
            settings[name] = [] if value == "none" else [value]
        elif name == "resume":
            settings["resume_from_checkpoint"] = "last" if value is True else value or None
        else:
            settings[RENAMED.get(name, name)] = value
    return settings
