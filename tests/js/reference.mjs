// Calls the Python reference (tests/js/python_reference.py) so that the Node tests compare against hf_lcrypt itself.
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const HERE = dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = join(HERE, "..", "..");

// HF_LCRYPT_PYTHON (set by tests/test_js.py) wins; else the project's .venv; else python3 on PATH.
function python() {
  if (process.env.HF_LCRYPT_PYTHON) return process.env.HF_LCRYPT_PYTHON;
  const venv = join(REPO_ROOT, ".venv", "bin", "python");
  return existsSync(venv) ? venv : "python3";
}

/** Run jobs (plain objects; byte arrays as base64) through Python and return its answers, in order. */
export function pythonReference(jobs) {
  const output = execFileSync(python(), [join(HERE, "python_reference.py")], {
    input: JSON.stringify(jobs),
    env: { ...process.env, PYTHONPATH: REPO_ROOT },
    maxBuffer: 1 << 28,
  });
  return JSON.parse(output.toString());
}

export const b64 = (bytes) => Buffer.from(bytes).toString("base64");
export const unb64 = (text) => new Uint8Array(Buffer.from(text, "base64"));

/** Deterministic test data (not cryptographic): a 32-bit xorshift generator. */
export function randomBytes(n, seed) {
  let s = seed >>> 0 || 1;
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    out[i] = s & 255;
  }
  return out;
}

/** Byte arrays equal; on failure say how many bytes differ and where the first is, not the whole arrays. */
export function assertSameBytes(actual, expected, what) {
  if (actual.length !== expected.length) throw new Error(`${what}: ${actual.length} bytes, expected ${expected.length}`);
  let first = -1;
  let count = 0;
  for (let i = 0; i < actual.length; i++) {
    if (actual[i] !== expected[i]) {
      count += 1;
      if (first < 0) first = i;
    }
  }
  if (count) {
    throw new Error(`${what}: ${count} of ${actual.length} bytes differ, first at ${first} (${actual[first]} != ${expected[first]})`);
  }
}
