#!/usr/bin/env python
"""Vendor the ES modules of @noble/hashes that space/static/lcrypt.mjs imports, from the npm registry.

The Space runs on the Hub without a build step, so the browser imports these files as they are. The version and the
tarball's checksum are pinned here: the download is refused unless it matches, and `MANIFEST.json` records the
SHA-256 of every vendored file so that anyone can check the committed copy offline.

    python scripts/vendor_noble_hashes.py            # download, verify, (re)write space/static/vendor/noble-hashes/
    python scripts/vendor_noble_hashes.py --check    # download, verify, and fail if the committed files differ
    python scripts/vendor_noble_hashes.py --offline  # only check the committed files against MANIFEST.json
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import sys
import tarfile
import urllib.request
from pathlib import Path

PACKAGE = "@noble/hashes"
VERSION = "2.4.0"
TARBALL = f"https://registry.npmjs.org/{PACKAGE}/-/hashes-{VERSION}.tgz"
# `npm view @noble/hashes@2.4.0 dist.integrity`: the registry's SHA-512 of the tarball.
INTEGRITY = "sha512-X5XaVWZIBCT7HHZGm5I7ZQXDwLG+bGXuSrMQAW+7Zvl87h1kmc1ZB1VSRJcpUfoUrGQp4Fkoxm5kZ+Ms+aW+eA=="
# SHA-256, HMAC, SHAKE-256 and scrypt, and the modules they import (relative imports, ready for the browser).
FILES = ("LICENSE", "_md.js", "_u64.js", "hmac.js", "pbkdf2.js", "scrypt.js", "sha2.js", "sha3.js", "utils.js")
DEST = Path(__file__).resolve().parent.parent / "space" / "static" / "vendor" / "noble-hashes"
MANIFEST = "MANIFEST.json"


def download() -> bytes:
    with urllib.request.urlopen(TARBALL, timeout=60) as response:
        data = response.read()
    digest = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    if digest != INTEGRITY:
        raise SystemExit(f"{TARBALL} does not match the pinned checksum ({digest} != {INTEGRITY}); nothing written.")
    return data


def extract(tarball: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        files = {}
        for name in FILES:
            member = archive.extractfile(f"package/{name}")
            if member is None:
                raise SystemExit(f"{name} is missing from {TARBALL}.")
            files[name] = member.read()
    return files


def manifest(files: dict[str, bytes]) -> bytes:
    record = {
        "package": PACKAGE,
        "version": VERSION,
        "tarball": TARBALL,
        "integrity": INTEGRITY,
        "sha256": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())},
    }
    return (json.dumps(record, indent=2) + "\n").encode()


def committed() -> dict[str, bytes]:
    return {name: (DEST / name).read_bytes() for name in FILES if (DEST / name).is_file()}


def check_offline() -> list[str]:
    """Problems with the committed copy: files missing, or not the ones MANIFEST.json records."""
    path = DEST / MANIFEST
    if not path.is_file():
        return [f"{path} is missing"]
    record = json.loads(path.read_text())
    problems = [] if record.get("version") == VERSION else [f"{MANIFEST} is for version {record.get('version')}"]
    files = committed()
    for name in FILES:
        if name not in files:
            problems.append(f"{name} is missing")
        elif hashlib.sha256(files[name]).hexdigest() != record["sha256"].get(name):
            problems.append(f"{name} differs from its SHA-256 in {MANIFEST}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="fail if the committed files differ from the registry's")
    mode.add_argument("--offline", action="store_true", help="only check the committed files against the manifest")
    args = parser.parse_args(argv)
    if args.offline:
        problems = check_offline()
    else:
        files = extract(download())
        expected = {**files, MANIFEST: manifest(files)}
        if args.check:
            present = {**committed(), MANIFEST: (DEST / MANIFEST).read_bytes() if (DEST / MANIFEST).is_file() else b""}
            problems = [f"{n} differs from {PACKAGE}@{VERSION}" for n, d in expected.items() if present.get(n) != d]
        else:
            DEST.mkdir(parents=True, exist_ok=True)
            for name, data in expected.items():
                (DEST / name).write_bytes(data)
            print(f"Wrote {PACKAGE}@{VERSION} ({len(files)} files) to {DEST}")
            problems = []
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if not problems and (args.check or args.offline):
        print(f"{DEST} holds {PACKAGE}@{VERSION} as pinned.")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
