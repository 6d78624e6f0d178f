"""One `hf-lcrypt encrypt`/`decrypt` over files, with the checks that keep a run from stopping half-way.

Every input is checked before the first output is written (readable to the end, a size the block size divides, and
for decryption the parameters the ciphertext carries); then each image is read, transformed and written atomically.
`--skip-errors` goes on past bad files and lists them; `--resume` keeps complete, matching outputs; Ctrl-C stops
with one line. The command line imports it only when it runs (it needs torch).
"""

from __future__ import annotations

import sys
import warnings
from argparse import Namespace

from tqdm.auto import tqdm

from . import DOCS_URL
from .cipher import BlockCipher
from .image_io import (
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
from .keys import LCryptKey
from .medical_io import OFFSET_CHUNK, MedicalOptions
from .png_metadata import cipher_params, mismatches


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
        self.failures: list[tuple[Job, str]] = []
        self.ciphers: dict[tuple[int, int, int], BlockCipher] = {}
        self.infos: dict[Job, ImageInfo] = {}
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
        done = [job for job in todo if args.resume and self.is_done(job)]
        todo = [job for job in todo if job not in done]
        try:
            for job in tqdm(todo, desc=self.action, unit="img", file=sys.stderr):
                self.written += self.transform(job)
        except KeyboardInterrupt:
            print(
                f"hf-lcrypt {self.action}: interrupted; {self.written} of {len(todo)} image(s) written, each "
                "complete (no partial files). Run the same command with --resume to do the rest.",
                file=sys.stderr,
            )
            return 130
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
            return self.fail(job, f"cannot be read ({err}); fix or remove it")
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
                found = info.params
                return self.fail(
                    job,
                    f"was encrypted with {', '.join(differ)}, so decrypting it with these options would give noise "
                    f"(use the key file with key_id {found.get('key_id')} and --block-size {found.get('block_size')} "
                    f"--steps {','.join(found.get('steps', []))})",
                )
        return True

    def channels(self, info: ImageInfo) -> int:
        return 1 if info.bits == 16 and not self.args.to_8bit else 3

    def cipher(self, shape: tuple[int, int], channels: int) -> BlockCipher:
        if (*shape, channels) not in self.ciphers:
            self.ciphers[(*shape, channels)] = BlockCipher(
                self.key, shape, self.args.block_size, channels, self.args.steps
            )
        return self.ciphers[(*shape, channels)]

    def is_done(self, job: Job) -> bool:
        """--resume: an existing output counts as done if it reads to the end and matches (encrypt: its parameters)."""
        if not job.target.exists():
            return False
        try:
            info = inspect_image(job.target)
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

    def transform(self, job: Job) -> bool:
        try:
            pixels, offset = read_source(job, self.medical, self.resize, keep_16_bit=not self.args.to_8bit)
        except READ_ERRORS as err:
            return self.fail(job, f"cannot be read ({err}); fix or remove it")
        cipher = self.cipher(pixels.shape[:2], pixels.shape[2])
        overwrite = self.args.force or self.args.resume
        if self.args.inverse:
            # --keep-bits ciphertexts of signed images say what was added to their stored values; the plain PNG
            # says it again, so that medical_io.stored_values gives them back exactly.
            offset = (self.infos[job].params or {}).get("offset")
            text = {OFFSET_CHUNK: str(int(offset))} if offset else None
            write_png(cipher.decrypt(pixels), job.target, overwrite, text=text)
        else:
            params = cipher_params(cipher.describe(), bits=pixels.dtype.itemsize * 8)
            if offset:
                params["offset"] = offset
            write_png(cipher.encrypt(pixels), job.target, overwrite, params)
        return True
