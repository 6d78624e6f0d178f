"""The one schema of an attack report, written by training (`write_attack_report`) and `hf-lcrypt attack`, and read
by field when a model card is built (`hf_lcrypt.hub.publish`)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

REFERENCE_CONDITIONS = ("clean", "wrong_key", "plain")


@dataclass
class AttackReport:
    """What an attack run measured on one image sample of a keyed model (or of the cipher alone).

    `accuracy` maps a condition to the keyed model's accuracy under it: `clean` (encrypted with the key),
    `wrong_key`, `plain` (not encrypted), and `<family>_<strength>` for the corruptions of
    `hf_lcrypt.attacks.corruptions.FAMILIES` (e.g. `noise_0.05`). `attacks` holds the detailed results of
    `hf-lcrypt attack` by attack name; `sources` what the sample was made from, and the command that reproduces it;
    `for_the_key_holder` what a run without the key left to the key holder, and the command that runs it.
    """

    FILENAME: ClassVar[str] = "attack_report.json"

    key_id: str
    cipher: dict[str, Any]
    split: str
    num_images: int
    accuracy: dict[str, float] = field(default_factory=dict)
    majority_class_accuracy: float | None = None
    wrong_key_id: str | None = None
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    attacks: dict[str, dict[str, Any]] = field(default_factory=dict)
    sources: dict[str, Any] = field(default_factory=dict)
    # A model trained without the key: the checks that need it (name -> why) and the key holder's command.
    for_the_key_holder: dict[str, Any] | None = None

    def write(self, directory: str | os.PathLike) -> Path:
        """Write `attack_report.json` into `directory`; returns its path."""
        path = Path(directory) / self.FILENAME
        path.write_text(json.dumps(asdict(self), indent=2, default=_jsonable) + "\n")
        return path

    @classmethod
    def read(cls, path: str | os.PathLike) -> AttackReport:
        """Read an `attack_report.json` (or the folder holding one)."""
        path = Path(path)
        path = path / cls.FILENAME if path.is_dir() else path
        data = json.loads(path.read_text())
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known) if isinstance(data, dict) else []
        if not isinstance(data, dict) or unknown:
            raise ValueError(
                f"{path} is not an hf-lcrypt attack report (unknown fields {unknown}); rerun the attack or training "
                "with this version to write one."
            )
        return cls(**data)

    def ordered_accuracies(self) -> list[tuple[str, float]]:
        """The accuracies, clean, wrong key and plain first, then each corruption family by increasing strength."""

        def order(item: tuple[str, float]) -> tuple[int, str, float]:
            name = item[0]
            if name in REFERENCE_CONDITIONS:
                return REFERENCE_CONDITIONS.index(name), "", 0.0
            family, _, strength = name.rpartition("_")
            try:
                return len(REFERENCE_CONDITIONS), family, float(strength)
            except ValueError:
                return len(REFERENCE_CONDITIONS), name, 0.0

        finite = {k: v for k, v in self.accuracy.items() if isinstance(v, int | float) and math.isfinite(v)}
        return sorted(finite.items(), key=order)


def _jsonable(value: Any) -> Any:
    """numpy and torch numbers as plain JSON numbers and lists."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
