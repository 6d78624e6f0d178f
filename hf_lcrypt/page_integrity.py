"""The Space page's files and their Subresource Integrity hashes, published with the package so that a visitor can
check the page a server sent (`hf-lcrypt verify-page URL`).

The app (space/app.py) pins every module and the stylesheet with these hashes (an import map for the modules the page
imports), so a browser refuses any file that differs from the declared hash. What this check adds is the other half:
that the declared hashes are the published ones. It cannot prove that a server sends every visitor the same page,
nor that the page has no other script: a dishonest server can serve anything (docs/private-inference.md).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import urllib.parse
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

# Relative to space/static: the module the page starts, those it imports, the vendored hashing and the stylesheet.
PAGE_FILES = (
    "page.mjs",
    "lcrypt.mjs",
    "pixels.mjs",
    "vendor/noble-hashes/_md.js",
    "vendor/noble-hashes/_u64.js",
    "vendor/noble-hashes/hmac.js",
    "vendor/noble-hashes/pbkdf2.js",
    "vendor/noble-hashes/scrypt.js",
    "vendor/noble-hashes/sha2.js",
    "vendor/noble-hashes/sha3.js",
    "vendor/noble-hashes/utils.js",
    "page.css",
)
MANIFEST = "space-page-integrity.json"
# A pinned file as the page declares it: in the import map ("URL": "HASH") or on a tag (src/href="URL" integrity=...).
_DECLARED = re.compile(r'/static/([\w./-]+)"(?::\s*|\s+integrity=)"(sha384-[A-Za-z0-9+/=]+)"')


def integrity(data: bytes) -> str:
    """The SRI value of some bytes: `sha384-` and the base64 digest (`openssl dgst -sha384 -binary | base64`)."""
    return "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode()


def compute_manifest(static: str | Path) -> dict[str, str]:
    static = Path(static)
    return {name: integrity((static / name).read_bytes()) for name in PAGE_FILES}


def published_manifest() -> dict[str, str]:
    """The hashes of this version's page files, as shipped in the package."""
    return json.loads((resources.files("hf_lcrypt") / "assets" / MANIFEST).read_text())


@dataclass
class FileCheck:
    name: str
    published: str
    declared: str | None  # what the page pins (None: the page does not pin it)
    served: str | None  # the hash of the file the server sends (None: not fetched)

    @property
    def ok(self) -> bool:
        return self.declared == self.published == self.served


def check_page(url: str, timeout: float = 30) -> list[FileCheck]:
    """Fetch the page at `url` and each pinned file, and compare their hashes with the published ones."""
    base = url if url.endswith("/") else url + "/"
    with urllib.request.urlopen(base, timeout=timeout) as response:
        page = html.unescape(response.read().decode("utf-8", "replace")).replace('\\"', '"')
    declared: dict[str, str] = {}
    urls: dict[str, str] = {}
    for match in _DECLARED.finditer(page):
        name, value = match.group(1), match.group(2)
        if declared.setdefault(name, value) != value:  # pinned twice with two hashes: count it as not pinned
            declared[name] = "conflicting hashes"
        start = page.rfind('"', 0, match.start()) + 1
        urls[name] = page[start : match.start()] + "/static/" + name
    checks = []
    for name, published in published_manifest().items():
        served = None
        if name in urls:
            with urllib.request.urlopen(urllib.parse.urljoin(base, urls[name].lstrip("/")), timeout=timeout) as r:
                served = integrity(r.read())
        checks.append(FileCheck(name, published, declared.get(name), served))
    return checks


def write_published_manifest(static: str | Path) -> Path:
    """Rewrite the package's manifest from the page files in `static` (after changing one of them)."""
    path = Path(__file__).parent / "assets" / MANIFEST
    path.write_text(json.dumps(compute_manifest(static), indent=2) + "\n")
    return path


__all__ = [
    "MANIFEST",
    "PAGE_FILES",
    "FileCheck",
    "check_page",
    "compute_manifest",
    "integrity",
    "published_manifest",
    "write_published_manifest",
]


if __name__ == "__main__":  # python -m hf_lcrypt.page_integrity [space/static]
    import sys

    print(write_published_manifest(sys.argv[1] if len(sys.argv) > 1 else "space/static"))
