"""The browser's cipher and resize (space/static/*.mjs) under Node's test runner, so that the README's one test
command (and CI) runs them: `node --test tests/js/` checks the spec's vectors and byte-for-byte agreement with
hf_lcrypt and PIL. Set HF_LCRYPT_SKIP_NODE=1 to skip them explicitly where Node 20+ is not installed.
"""

import os
import shutil
import subprocess
import sys

import pytest
from helpers import REPO_ROOT

NODE = os.environ.get("HF_LCRYPT_NODE", "node")


def test_node_suite():
    if os.environ.get("HF_LCRYPT_SKIP_NODE") == "1":
        pytest.skip("HF_LCRYPT_SKIP_NODE=1")
    if shutil.which(NODE) is None:
        pytest.fail(f"No Node.js ({NODE}): install Node 20 or later, or set HF_LCRYPT_SKIP_NODE=1")
    env = {**os.environ, "HF_LCRYPT_PYTHON": sys.executable}
    result = subprocess.run(
        [NODE, "--test", "tests/js/"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"node --test tests/js/ failed:\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    assert "# fail 0" in result.stdout and "# pass 0" not in result.stdout


def test_vendored_hashes_match_their_manifest():
    """The committed @noble/hashes files are the pinned ones (`scripts/vendor_noble_hashes.py --check` re-downloads)."""
    result = subprocess.run(
        [sys.executable, "scripts/vendor_noble_hashes.py", "--offline"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
