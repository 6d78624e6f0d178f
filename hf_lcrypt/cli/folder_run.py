"""One `hf-lcrypt encrypt`/`decrypt` over files, with the checks that keep a run from stopping half-way.

Every input is checked before the first output is written (readable to the end, a size the block size divides, and
for decryption the parameters the ciphertext carries); then each image is read, transformed and written atomically.
`--skip-errors` goes on past bad files and lists them; `--resume` keeps complete, matching outputs; Ctrl-C stops
with one line, and so does SIGTERM (`docker stop`, systemd); a rerun removes the temporary files a killed run left.
The command line imports it only when it runs (it needs torch).
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import sys
import threading
import warnings
from argparse import Namespace
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from tqdm import tqdm  # not tqdm.auto: a command line needs no notebook widget, nor asyncio's import

from .. import DOCS_URL
from ..cipher import BlockCipher, CipherCache
from ..keys import SPEC_VERSION, LCryptKey
from ..medical_io import OFFSET_CHUNK, MedicalOptions
from ..png_metadata import SOURCE_KEY, cipher_params, mismatches
from ..signals import describe, exit_status, stop_on_sigterm
from .image_io import (
    CIPHERTEXT_COMPRESS_LEVEL,
    LOSSY_SUFFIXES,
    READ_ERRORS,
    ImageInfo,
    Job,
    inspect_image,
    inspect_source,
    plan_jobs,
    read_source,
    write_png,
)

# Peak memory of one image, measured by scripts/bench_memory.py (docs/reliability.md): about 6x its decoded size,
# plus what importing the library takes. `--help` states the same bound.
MEMORY_MULTIPLE, MEMORY_BASE = 6, 0.4e9


def physical_memory() -> int:
    """This machine's memory in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(height: int, width: int, what: str, at_once: int = 1) -> None:
    """Refuse an image size whose transform would not fit in this machine's memory (`at_once` images at a time, one
    per worker process), before any pixel is read."""
    needed = MEMORY_MULTIPLE * height * width * 3 * at_once + MEMORY_BASE
    available = physical_memory()
    if needed > available:
        images = f"{at_once} such images at once (--num-proc)" if at_once > 1 else "the image"
        fix = "a smaller --image-size or --num-proc" if at_once > 1 else "a smaller --image-size"
        raise ValueError(
            f"{what} {height}x{width} needs about {needed / 1e9:.3g} GB of memory ({MEMORY_MULTIPLE}x "
            f"{images}, {height * width * 3 / 1e9:.3g} GB each, plus {MEMORY_BASE / 1e9:.1f} GB), more than this "
            f"machine's {available / 1e9:.3g} GB; pick {fix}."
        )


def write_failure(job: Job, err: OSError, written: int) -> str:
    """What a failed write says: the output, the cause in words, what is complete, and the way on."""
    folder = job.target.parent
    causes = {
        errno.ENOSPC: ("the disk is full", "free some space"),
        errno.EDQUOT: ("the disk quota is used up", "free some space"),
        errno.EROFS: (f"{folder} is on a read-only file system", "choose a writable output folder"),
        errno.EACCES: (f"no permission to write in {folder}", "choose a folder you can write to"),
        errno.EPERM: (f"no permission to write in {folder}", "choose a folder you can write to"),
    }
    cause, fix = causes.get(err.errno, (err.strerror or str(err), "fix that"))
    return (
        f"{job.target} cannot be written: {cause}. The {written} output(s) written before it are complete (no partial "
        f"file is left); {fix}, then run the same command with --resume to do the rest."
    )


def read_failure(job: Job, err: Exception) -> str:
    """What an input that cannot be used says: hf-lcrypt's own refusals (animated, transparent, 16-bit colour, an
    edited parameters chunk) already name the file and the fix; Pillow's errors are wrapped."""
    text, own = str(err), f"{job.source} "
    return text[len(own) :].rstrip(".") if text.startswith(own) else f"cannot be read ({err}); fix or remove it"


class CipherRun:
    """One `encrypt`/`decrypt` over files: everything is checked before the first output is written, then each image
    is read, transformed and written atomically; --skip-errors and --resume decide what a bad or done file does."""

    def __init__(self, args: Namespace):
        self.args = args
        self.action = "decrypt" if args.inverse else "encrypt"
        self.key = LCryptKey.load(args.key_file)
        self.resize = None if args.inverse else args.image_size
        self.medical = MedicalOptions(
            getattr(args, "window", "file"), getattr(args, "keep_bits", False), getattr(args, "axis", "axial")
        )
        self.jobs = plan_jobs(args.src, args.dst, overwrite=args.force, resume=args.resume, medical=self.medical)
        self.at_once = min(getattr(args, "num_proc", 1) or 1, len(self.jobs))
        if args.image_size is not None:
            check_memory(*args.image_size, "--image-size", self.at_once)
        self.failures: list[tuple[Job, str]] = []
        self.ciphers = CipherCache(self.key, args.block_size, args.steps)
        self.infos: dict[Job, ImageInfo] = {}
        self.tags: dict[Path, str] = {}
        self.written = 0

    def run(self) -> int:
        args = self.args
        if args.inverse:
            lossy = [job.source for job in self.jobs if job.source.suffix.lower() in LOSSY_SUFFIXES]
            if lossy:
                warnings.warn(
                    f"{len(lossy)} input(s), e.g. {lossy[0]}, are JPEG: a re-compressed ciphertext cannot be decrypted "
                    f"exactly ({DOCS_URL}/lossless.md).",
                    stacklevel=1,
                )
        todo = [job for job in self.jobs if self.check(job)]
        unmarked = [job.source for job in todo if self.infos[job].params is None] if args.inverse else []
        if unmarked:
            warnings.warn(
                f"{len(unmarked)} input(s), e.g. {unmarked[0]}, carry no hf-lcrypt parameters (encrypted by an older "
                "version or by hand): a wrong key, block size or steps cannot be detected there and would give noise.",
                stacklevel=1,
            )
        if self.infos and self.resize is None:
            largest = max(self.infos.values(), key=lambda info: info.height * info.width)
            check_memory(largest.height, largest.width, "The largest image is", self.at_once)
        done = [job for job in todo if args.resume and self.is_done(job)]
        todo = [job for job in todo if job not in done]
        try:
            with stop_on_sigterm():  # before the workers fork: they stop as on Ctrl-C too
                self.transform_all(todo)
        except KeyboardInterrupt as err:
            print(
                f"hf-lcrypt {self.action}: {describe(err)}; {self.written} of {len(todo)} image(s) written, each "
                "complete (no partial files). Run the same command with --resume to do the rest.",
                file=sys.stderr,
            )
            return exit_status(err)
        kept = f" ({len(done)} complete output(s) kept)" if done else ""
        print(
            f"{self.action}ed {self.written} image(s) with key {self.key.key_id} into {args.dst}{kept}", file=sys.stderr
        )
        if self.failures:
            print(f"hf-lcrypt {self.action}: {len(self.failures)} image(s) failed and were skipped:", file=sys.stderr)
            for job, message in self.failures:
                print(f"  {job.source}: {message}", file=sys.stderr)
            return 1
        return 0

    def fail(self, job: Job, message: str) -> bool:
        """With --skip-errors, note the failure and go on (False); otherwise stop with the file's name and the way
        on (outputs written so far are complete)."""
        if not self.args.skip_errors:
            written = (
                f"; the {self.written} output(s) written are complete: rerun with --resume" if self.written else ""
            )
            raise ValueError(f"{job.source}: {message}{written}. Pass --skip-errors to go on past such files.")
        if all(job.source != failed.source for failed, _ in self.failures):  # one line per file, not per frame
            self.failures.append((job, message))
        return False

    def check(self, job: Job) -> bool:
        """Whether `job` can run: readable, of a size the block size divides, and (decrypt) made with these options."""
        args, size = self.args, self.args.image_size
        try:
            info = inspect_source(job, self.medical)
        except READ_ERRORS as err:
            return self.fail(job, read_failure(job, err))
        self.infos[job] = info
        shape = self.resize or (info.height, info.width)
        if size is not None and shape != size:
            return self.fail(
                job,
                f"is {shape[0]}x{shape[1]}, not the --image-size {size[0]}x{size[1]} (a resized ciphertext cannot be "
                "decrypted)",
            )
        if shape[0] % args.block_size or shape[1] % args.block_size:
            hint = "pick multiples" if size else f"pass --image-size with multiples of {args.block_size}"
            return self.fail(
                job,
                f"would be {shape[0]}x{shape[1]}, which the block size {args.block_size} does not divide ({hint}, "
                f"e.g. --image-size {max(1, round(shape[0] / args.block_size)) * args.block_size})",
            )
        if args.inverse and info.params is not None:
            expected = cipher_params(self.cipher(shape, self.channels(info)).describe(), info.bits)
            differ = mismatches(info.params, expected)
            if differ:
                return self.fail(job, f"was encrypted with {', '.join(differ)}, so {self.mismatch_hint(info.params)}")
        return True

    def mismatch_hint(self, found: dict) -> str:
        """The cause of a parameter mismatch in words, and the fix: a newer spec, --to-8bit on a 16-bit ciphertext,
        or another key, block size or steps."""
        if found.get("spec", SPEC_VERSION) > SPEC_VERSION:
            return (
                f"it was written by a newer hf-lcrypt (key spec {found['spec']}, this one reads {SPEC_VERSION}); "
                "upgrade hf-lcrypt (pip install -U hf-lcrypt) to decrypt it"
            )
        if found.get("spec", SPEC_VERSION) < SPEC_VERSION:
            return f"it follows key spec {found['spec']}, which this version cannot decrypt; use an older hf-lcrypt"
        if self.args.to_8bit and found.get("bits") == 16:
            return (
                "it is a 16-bit ciphertext, which decrypts only at 16 bits: leave out --to-8bit (then window the plain "
                "16-bit images with hf_lcrypt.cli.image_io.to_8bit, or encrypt them with --to-8bit)"
            )
        return (
            f"decrypting it with these options would give noise (use the key file with key_id {found.get('key_id')} "
            f"and --block-size {found.get('block_size')} --steps {','.join(found.get('steps', []))})"
        )

    def channels(self, info: ImageInfo) -> int:
        return 1 if info.bits == 16 and not self.args.to_8bit else 3

    def cipher(self, shape: tuple[int, int], channels: int) -> BlockCipher:
        return self.ciphers.get(*shape, channels)

    def is_done(self, job: Job) -> bool:
        """--resume: an existing output counts as done if it reads to the end and matches (encrypt: its parameters)."""
        if not job.target.exists():
            return False
        try:
            info = inspect_image(job.target)
            if info.source != self.source_tag(job):  # made from another version of the input
                return False
        except READ_ERRORS:
            return False
        source = self.infos[job]
        shape = self.resize or (source.height, source.width)
        if (info.height, info.width) != shape:
            return False
        if self.args.inverse:
            return info.params is None and info.bits == (8 if self.args.to_8bit else source.bits)
        channels = self.channels(source)
        expected = cipher_params(self.cipher(shape, channels).describe(), 16 if channels == 1 else 8)
        return info.params is not None and not mismatches(info.params, expected)

    def source_tag(self, job: Job) -> str:
        """The keyed tag of the job's input file (once per file: a volume's slices share it)."""
        if job.source not in self.tags:
            self.tags[job.source] = self.key.tag(job.source.read_bytes())
        return self.tags[job.source]

    def transform_all(self, todo: list[Job]) -> None:
        """Each job in order, in this process or in `--num-proc` worker processes (forked: they share the key and
        the ciphers already made). Failures come back in the order of the jobs, and are handled here."""
        processes = min(getattr(self.args, "num_proc", 1) or 1, len(todo))
        forking = processes > 1 and fork_is_safe()  # before the progress bar starts its monitor thread
        progress = tqdm(total=len(todo), desc=self.action, unit="img", file=sys.stderr)
        if not forking:
            for job in todo:
                self.written += self.handle(job, self.written_or_raise(job, lambda job=job: self.transform(job)))
                progress.update()
            progress.close()
            return
        global _ACTIVE
        _ACTIVE = self
        chunk = max(1, min(16, len(todo) // (4 * processes)))
        pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork"))
        try:
            results = pool.map(_transform, todo, chunksize=chunk)
            for job in todo:
                self.written += self.handle(job, self.written_or_raise(job, lambda: next(results)))
                progress.update()
        except BrokenProcessPool:
            raise OSError(
                f"a worker process died (killed, or out of memory); the {self.written} output(s) written are "
                "complete: rerun with --resume, with a smaller --num-proc"
            ) from None
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # what runs finishes its file: complete or absent
            progress.close()
            _ACTIVE = None

    def handle(self, job: Job, message: str | None) -> bool:
        return True if message is None else self.fail(job, message)

    def written_or_raise(self, job: Job, result: Callable[[], str | None]) -> str | None:
        """`result()`, with a failed write (disk full, read-only folder) told in words: it stops the run."""
        try:
            return result()
        except FileExistsError:
            raise
        except OSError as err:
            raise OSError(write_failure(job, err, self.written)) from err

    def transform(self, job: Job) -> str | None:
        """Read, transform and write one image; None, or what is wrong with the input."""
        try:
            pixels, offset = read_source(job, self.medical, self.resize, keep_16_bit=not self.args.to_8bit)
        except READ_ERRORS as err:
            return read_failure(job, err)
        cipher = self.cipher(pixels.shape[:2], pixels.shape[2])
        overwrite = self.args.force or self.args.resume
        text = {SOURCE_KEY: self.source_tag(job)}
        if self.args.inverse:
            # --keep-bits ciphertexts of signed images say what was added to their stored values; the plain PNG
            # says it again, so that medical_io.stored_values gives them back exactly.
            offset = (self.infos[job].params or {}).get("offset")
            if offset:
                text[OFFSET_CHUNK] = str(int(offset))
            write_png(cipher.decrypt(pixels), job.target, overwrite, text=text)
        else:
            params = cipher_params(cipher.describe(), bits=pixels.dtype.itemsize * 8)
            if offset:
                params["offset"] = offset
            write_png(cipher.encrypt(pixels), job.target, overwrite, params, text, CIPHERTEXT_COMPRESS_LEVEL)
        return None


_ACTIVE: CipherRun | None = None  # the run a forked worker process works for


def _transform(job: Job) -> str | None:
    return _ACTIVE.transform(job)


def fork_is_safe() -> bool:
    """Whether worker processes may be forked from this one. A fork copies locks that other threads hold (a web
    server's, torch's OpenMP pool) and the child can wait on them forever; the command line starts with one thread
    and without torch, so it forks, while a busy caller (a notebook, a server, a test run) transforms in-process."""
    return (
        "fork" in multiprocessing.get_all_start_methods()
        and threading.active_count() == 1
        and "torch" not in sys.modules
    )


def default_processes() -> int:
    """All the cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
