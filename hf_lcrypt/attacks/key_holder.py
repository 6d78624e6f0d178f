"""The key holder's half of an attack report written without the key.

A model trained on ciphertexts by someone who never held the key leaves wrong-key accuracy, plain-input accuracy and
the weights-only score "for the key holder" in its `attack_report.json`. `hf-lcrypt attack --model M --key-file K
--data PLAIN` runs those checks and completes the model folder's own report (and writes `weights_only_attack.json`,
which the model card and the publish gate read). Every file is replaced whole, after everything was measured, so a
failure leaves the folder as it was. No image and no figure goes into the model folder: they stay in `--out`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..hub.checks import WEIGHTS_ONLY_FILE
from .record import AttackReport

# What each key holder's attack measures of KEY_HOLDER_CONDITIONS.
KEY_HOLDER_ATTACKS = {
    "access": ("wrong_key", "plain"),
    "weights-only": ("weights_only",),
    "weights-only-adaptive": ("weights_only",),
}
_SECTION = "## For the key holder"
_WEIGHTS_ROWS = tuple(f"{prefix}{name}" for name in ("flips_right", "pixel_neighbours_kept", "block_neighbours_kept")
                      for prefix in ("", "chance_"))  # fmt: skip


def pending_conditions(model_dir: str | os.PathLike) -> dict[str, str]:
    """The checks a keyless training run left to the key holder in `model_dir`'s attack report (none: {})."""
    path = Path(model_dir) / AttackReport.FILENAME
    if not path.is_file():
        return {}
    return dict((AttackReport.read(path).for_the_key_holder or {}).get("conditions") or {})


def default_attacks(model_dir: str | os.PathLike) -> tuple[str, ...]:
    """The attacks that measure what is pending in `model_dir` (none pending: ())."""
    pending = set(pending_conditions(model_dir))
    return tuple(name for name in ("access", "weights-only") if pending & set(KEY_HOLDER_ATTACKS[name]))


def complete_report(
    model_dir: str | os.PathLike, results: dict[str, dict[str, Any]], sources: dict[str, Any]
) -> list[Path]:
    """Add the key holder's measurements (`run_report`'s results by attack name, and what the sample was made from)
    to `model_dir`'s attack report: `wrong_key` and `plain` accuracies from `access`, the weights-only scores into
    `weights_only_attack.json`; measured conditions leave the "for the key holder" list. Returns the files replaced."""
    model_dir = Path(model_dir)
    report = AttackReport.read(model_dir)
    pending = dict((report.for_the_key_holder or {}).get("conditions") or {})
    measured = {name: results[name] for name in KEY_HOLDER_ATTACKS if name in results}
    if not pending or not measured:
        return []
    texts: dict[Path, str] = {}
    if "access" in measured:
        access = measured["access"]
        report.accuracy.update(wrong_key=access["wrong_key_mean"], plain=access["plain_images"])
    weights = measured.get("weights-only-adaptive") or measured.get("weights-only")
    if weights is not None:
        scores = {k: v for k, v in weights.items() if k != "seconds"}
        texts[model_dir / WEIGHTS_ONLY_FILE] = json.dumps(scores, indent=2) + "\n"
    done = {condition for name in measured for condition in KEY_HOLDER_ATTACKS[name]}
    report.attacks.update(measured)
    report.sources["key_holder"] = sources
    report.for_the_key_holder = {
        **(report.for_the_key_holder or {}),
        "conditions": {name: why for name, why in pending.items() if name not in done},
    }
    texts[model_dir / AttackReport.FILENAME] = json.dumps(asdict(report), indent=2) + "\n"
    markdown = model_dir / "attack_report.md"
    if markdown.is_file():
        texts[markdown] = _completed_markdown(markdown.read_text(), report, measured, sources)
    for path, text in texts.items():
        _replace(path, text)
    return list(texts)


def _completed_markdown(
    text: str, report: AttackReport, measured: dict[str, dict[str, Any]], sources: dict[str, Any]
) -> str:
    """The training run's Markdown report with its "For the key holder" section replaced by what the key holder
    measured (the figures at its end kept)."""
    head, _, tail = text.partition(_SECTION)
    figures = "".join(line + "\n" for line in tail.splitlines() if line.startswith("!["))
    rows = []
    if "access" in measured:
        access = measured["access"]
        rows += [
            ("`wrong_key` (mean of the wrong keys)", access["wrong_key_mean"]),
            ("`plain`", access["plain_images"]),
            ("`clean` on these images", access["right_key"]),
        ]
    weights = measured.get("weights-only-adaptive") or measured.get("weights-only")
    if weights is not None:
        rows += [(f"weights alone: `{name}`", weights[name]) for name in _WEIGHTS_ROWS if name in weights]
    table = "\n".join(f"| {name} | {value:.4f} |" for name, value in rows)
    left = report.for_the_key_holder["conditions"]
    still = "".join(f"- `{name}`: {why}\n" for name, why in left.items())
    section = (
        f"## Measured by the key holder\n\nWith the key, on {sources['num_images']} plain {sources['split']} images "
        f"of `{sources['data']}`:\n\n| measurement | value |\n|---|---|\n{table}\n\n"
        f"```bash\n{sources['command']}\n```\n\n" + (f"Still for the key holder:\n\n{still}\n" if still else "")
    )
    return head + section + figures


def _replace(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary sibling, so the file is either the old one or the new one whole."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
