"""The outcome of reading every DICOM sample file, as the table in docs/reliability.md.

    python scripts/dicom_reliability.py [SAMPLES_DIR] [--write]

Reads each file the way `hf-lcrypt encrypt` does (default window, then --keep-bits) and prints one table row per
file: what was read or the one line it was refused with. `--write` replaces the table in docs/reliability.md;
tests/test_medical.py checks that the table there is what this script prints.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DOC = REPO_ROOT / "docs" / "reliability.md"
DEFAULT_SAMPLES = REPO_ROOT.parent / "shared" / "data" / "dicom-samples"
BEGIN, END = "<!-- dicom-samples table: begin -->", "<!-- dicom-samples table: end -->"


def outcome(path: Path) -> tuple[str, str]:
    """(8-bit outcome, --keep-bits outcome) of one file."""
    from hf_lcrypt.medical_io import MedicalOptions, MedicalReadError, medical_info, read_medical

    results = []
    for options in (MedicalOptions(), MedicalOptions(keep_bits=True)):
        try:
            info = medical_info(path, options)
            for index in range(info.count):
                read_medical(path, index, options)
            images = f"{info.count} images" if info.count > 1 else "1 image"
            results.append(f"{images} {info.height}x{info.width}, {info.bits}-bit")
        except MedicalReadError as err:
            results.append(f"refused: {err}")
    return results[0], results[1]


def encoding(path: Path) -> tuple[str, str, str]:
    """Transfer syntax, photometric interpretation and bits allocated of a sample (pixel-module facts only)."""
    from hf_lcrypt.medical_io import quiet

    with quiet():
        import pydicom

        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    uid = ds.file_meta.get("TransferSyntaxUID")
    syntax = "none (no preamble)" if uid is None else uid.name
    return syntax, str(ds.get("PhotometricInterpretation", "?")), str(ds.get("BitsAllocated", "?"))


def table(samples: Path) -> str:
    rows = [
        "| file | transfer syntax | photometric | bits | 8-bit (default window) | `--keep-bits` |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for path in sorted(samples.glob("*.dcm")):
        windowed, kept = outcome(path)
        rows.append(f"| `{path.name}` | {' | '.join(encoding(path))} | {windowed} | {kept} |")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    args = [a for a in argv if a != "--write"]
    samples = Path(args[0]) if args else DEFAULT_SAMPLES
    text = table(samples)
    if "--write" in argv:
        doc = DOC.read_text()
        start, end = doc.index(BEGIN) + len(BEGIN), doc.index(END)
        DOC.write_text(doc[:start] + "\n" + text + "\n" + doc[end:])
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
