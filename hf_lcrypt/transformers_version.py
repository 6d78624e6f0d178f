"""The transformers version the remote code needs, checked on import, before any import that an older transformers
lacks: an unsupported version gets one line naming the version needed, not a FileNotFoundError or an ImportError from
deep inside transformers.

Supporting transformers 4.x here would take a second config, processor and weight-naming path; servers on 4.x load
the standard export instead (`hf-lcrypt export MODEL OUT --format vit`), a plain ViT that needs no remote code.
"""

import re

import transformers

MIN_VERSION = (5, 24)
REQUIREMENT = "transformers>=5.24"


def check_transformers_version(version: str | None = None) -> None:
    """Raise one ImportError line if the installed transformers is older than the remote code needs."""
    version = version or transformers.__version__
    found = tuple(int(n) for n in re.findall(r"\d+", version)[:2])
    if found < MIN_VERSION:
        raise ImportError(
            f"This hf-lcrypt model's remote code needs {REQUIREMENT} (installed: {version}): pip install -U "
            f"'{REQUIREMENT}', or serve its standard export, which loads without remote code on transformers 4.x and "
            "5.x: hf-lcrypt export MODEL OUT --format vit."
        )


check_transformers_version()
