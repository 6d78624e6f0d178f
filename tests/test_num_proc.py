"""`hf-lcrypt encrypt/decrypt --num-proc N`: the same outputs as one process, and the same guarantees."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli as run
from PIL import Image

pytestmark = pytest.mark.usefixtures("cli_workdir")


def images(folder: Path, count: int, bad: tuple[int, ...] = ()) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir()
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    for i in bad:  # a JPEG cut short: its header reads, its data fails only when decoded (in a worker)
        Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(folder / f"{i:02d}x.jpg")
        data = (folder / f"{i:02d}x.jpg").read_bytes()
        (folder / f"{i:02d}x.jpg").write_bytes(data[: len(data) // 2])


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run_fresh(*argv: object) -> tuple[int, str, str]:
    """The command line in a fresh process, as a user runs it: one thread, no torch, so it forks its workers."""
    done = subprocess.run(
        [sys.executable, "-m", "hf_lcrypt.cli", *map(str, argv)], capture_output=True, text=True, timeout=300
    )
    return done.returncode, done.stdout, done.stderr


def test_the_command_line_forks_its_workers():
    code = (
        "import sys; from hf_lcrypt.cli import folder_run, main; forks = []; "
        "real = folder_run.ProcessPoolExecutor; "
        "folder_run.ProcessPoolExecutor = lambda *a, **k: forks.append(a[0]) or real(*a, **k); "
        "rc = main(['encrypt', '--key-file', 'k.key', '--block-size', '8', '--num-proc', '3', 'plain', 'enc']); "
        "print(rc, forks)"
    )
    images(Path("plain"), 6)
    assert run_fresh("keygen", "k.key")[0] == 0
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["0", "[3]"] and len(tree(Path("enc"))) == 6


def test_processes_give_the_same_files_and_failures_as_one(capsys, key_file):
    images(Path("plain"), 12, bad=(3, 7))
    cipher = ["--key-file", key_file, "--block-size", 8, "--image-size", 32, "--skip-errors"]
    results = {}
    for n in (1, 3):
        rc, _, err = run_fresh("encrypt", *cipher, "--num-proc", n, "plain", f"enc{n}")
        failures = [line for line in err.splitlines() if line.startswith("  ")]
        results[n] = (rc, failures, tree(Path(f"enc{n}")))
        assert rc == 1 and len(failures) == 2 and "03x.jpg" in failures[0] and "07x.jpg" in failures[1]
    assert results[1] == results[3] and len(results[3][2]) == 12
    rc, _, err = run(capsys, "encrypt", *cipher, "--num-proc", 3, "--resume", "plain", "enc3")
    assert "12 complete output(s) kept" in err
    rc, _, _ = run(capsys, "decrypt", "--key-file", key_file, "--block-size", 8, "--num-proc", 2, "enc3", "dec")
    assert rc == 0 and len(tree(Path("dec"))) == 12


def test_a_failure_without_skip_errors_stops_with_complete_outputs_only(capsys, key_file):
    images(Path("plain"), 12, bad=(5,))
    rc, _, err = run(capsys, "encrypt", "--key-file", key_file, "--block-size", 8, "--num-proc", 2, "plain", "enc")
    assert rc == 1 and "05x.jpg" in err and "--skip-errors" in err
    for path in Path("enc").rglob("*"):  # no temporaries; every file there decodes to the end
        assert path.suffix == ".png" and not path.name.startswith(".")
        with Image.open(path) as image:
            image.load()


def test_encrypt_and_decrypt_do_not_import_torch(tmp_path, capsys, key_file):
    images(Path("plain"), 2)
    code = (
        "import sys; from hf_lcrypt.cli import main; "
        "rc = main(['encrypt', '--key-file', 'k.key', '--block-size', '8', '--num-proc', '1', 'plain', 'enc']); "
        "rc += main(['decrypt', '--key-file', 'k.key', '--block-size', '8', '--num-proc', '1', 'enc', 'dec']); "
        "print(rc, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["0", "False"]


def test_a_busy_process_transforms_in_process_instead_of_forking(capsys, key_file, monkeypatch):
    """Forking a process whose other threads hold locks (a server, torch's pool) can hang the child: such a caller
    gets the same outputs from its own process."""
    import threading

    from hf_lcrypt.cli import folder_run

    stop = threading.Event()
    worker = threading.Thread(target=stop.wait)
    worker.start()
    try:
        assert folder_run.fork_is_safe() is False
        forks = []
        monkeypatch.setattr(folder_run, "ProcessPoolExecutor", lambda *a, **k: forks.append(a) or None)
        images(Path("plain"), 6)
        rc, _, _ = run(capsys, "encrypt", "--key-file", key_file, "--block-size", 8, "--num-proc", 3, "plain", "e")
        assert rc == 0 and not forks and len(tree(Path("e"))) == 6
    finally:
        stop.set()
        worker.join()
