// The browser's cipher (space/static/lcrypt.mjs) against the spec's test vectors and the Python implementation.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";

import { ALL_STEPS, BlockCipher, LCryptKey } from "../../space/static/lcrypt.mjs";
import { sha256 } from "../../space/static/vendor/noble-hashes/sha2.js";
import { checkVectors } from "./check_vectors.mjs";
import { assertSameBytes, b64, pythonReference, randomBytes, REPO_ROOT, unb64 } from "./reference.mjs";

const VECTORS = JSON.parse(readFileSync(join(REPO_ROOT, "tests", "vectors", "v1.json"), "utf8"));

test("every value of tests/vectors/v1.json", async () => {
  assert.deepEqual(await checkVectors({ LCryptKey, BlockCipher }, sha256, VECTORS), []);
});

test("byte for byte the Python cipher on random images and keys", () => {
  const geometries = [
    [28, 28, 4, 3],
    [64, 64, 8, 3],
    [200, 200, 25, 3],
    [224, 224, 16, 3],
    [48, 32, 8, 1], // not square, one channel
  ];
  const stepSets = [ALL_STEPS, ["pixel_shuffle"], ["negative_positive", "block_scramble"]];
  const jobs = [];
  const cases = [];
  geometries.forEach(([height, width, blockSize, channels], g) => {
    stepSets.forEach((steps, s) => {
      const key = LCryptKey.generate();
      const pixels = randomBytes(height * width * channels, 1000 * g + s + 1);
      const cipher = new BlockCipher(key, { height, width, blockSize, channels, steps });
      const encrypted = cipher.encrypt(pixels);
      const geometry = { key_hex: key.toHex(), height, width, block_size: blockSize, channels, steps };
      jobs.push({ op: "encrypt", ...geometry, pixels: b64(pixels) }, { op: "decrypt", ...geometry, pixels: b64(encrypted) });
      cases.push({ name: `${cipher.geometry} ${steps}`, pixels, encrypted });
      assertSameBytes(cipher.decrypt(encrypted), pixels, `${cipher.geometry}: decrypt(encrypt(x)) == x`);
    });
  });
  const answers = pythonReference(jobs);
  cases.forEach(({ name, pixels, encrypted }, i) => {
    assertSameBytes(encrypted, unb64(answers[2 * i]), `${name}: the Python ciphertext`);
    assertSameBytes(unb64(answers[2 * i + 1]), pixels, `${name}: Python decrypts the JS ciphertext`);
    assert.notDeepEqual(encrypted, pixels);
  });
});

test("keys: generate, derive, key files, and a repr without the secret", () => {
  const key = LCryptKey.generate();
  assert.match(key.toHex(), /^[0-9a-f]{64}$/);
  assert.notEqual(key.toHex(), LCryptKey.generate().toHex());
  assert.match(key.keyId, /^[0-9a-f]{16}$/);
  assert.ok(LCryptKey.fromKeyFile(`  ${key.toKeyFile().toUpperCase()}\n`).equals(key));
  assert.equal(key.toKeyFile(), `${key.toHex()}\n`);
  assert.notEqual(key.derive("hospital-a").toHex(), key.derive("hospital-b").toHex());
  for (const shown of [String(key), JSON.stringify({ key }), `${key}`]) {
    assert.ok(!shown.includes(key.toHex()) && shown.includes(key.keyId), shown);
  }
});

test("clear errors for bad keys and bad images", async () => {
  const secret = "0123456789abcdef".repeat(4);
  assert.throws(() => LCryptKey.fromHex(secret.slice(0, 62)), /64 hexadecimal characters, got 62/);
  assert.throws(() => LCryptKey.fromHex(`${secret.slice(0, 63)}g`), /not all hex digits/);
  assert.throws(() => LCryptKey.fromKeyFile("hello"), (err) => /not an hf-lcrypt key file/.test(err.message) && !err.message.includes("hello"));
  assert.throws(() => new LCryptKey(new Uint8Array(16)), /32 bytes \(256 bits\), got 16/);
  await assert.rejects(LCryptKey.fromPassphrase(""), /passphrase is empty/);
  await assert.rejects(LCryptKey.fromPassphrase("short-pass"), /10 characters, under the minimum of 12/);
  assert.equal((await LCryptKey.fromPassphrase("short-pass", { allowShort: true })).keyId.length, 16);
  assert.throws(() => LCryptKey.generate().derive(""), /clientId is empty/);
  const key = LCryptKey.fromHex(secret);
  assert.throws(() => new BlockCipher(key, { height: 30, width: 28, blockSize: 4 }), /Block size 4 does not divide the image size 30x28/);
  assert.throws(() => new BlockCipher(key, { height: 28, width: 28, blockSize: 0 }), /blockSize must be a positive integer/);
  assert.throws(() => new BlockCipher(key, { height: 28, width: 28, blockSize: 4, steps: ["shuffle"] }), /Unknown cipher step/);
  assert.throws(() => new BlockCipher(secret, { height: 28, width: 28, blockSize: 4 }), /needs an LCryptKey/);
  const cipher = new BlockCipher(key, { height: 28, width: 28, blockSize: 4 });
  assert.throws(() => cipher.encrypt(new Uint8Array(28 * 28 * 4)), /Expected 2352 values \(28x28x3/);
  assert.throws(() => cipher.decrypt([1, 2, 3]), /Uint8Array or Uint8ClampedArray/);
  const clamped = new Uint8ClampedArray(randomBytes(28 * 28 * 3, 7));
  assert.deepEqual(cipher.encrypt(clamped), cipher.encrypt(Uint8Array.from(clamped)));
});

test("a forged stream with rejected draws shuffles as the spec says", () => {
  // bound = 3 rejects r >= 2**32 - (2**32 mod 3) = 4294967295: the all-ones word is skipped, the next one used.
  const key = LCryptKey.generate();
  const words = [0xffffffff, 5, 0xfffffffe, 7].flatMap((w) => [w >>> 24, (w >>> 16) & 255, (w >>> 8) & 255, w & 255]);
  const forged = Object.create(key, { stream: { value: () => Uint8Array.from(words) } });
  // i = 2: skip 0xffffffff, j = 5 mod 3 = 2 (no swap); i = 1: 0xfffffffe < 2**32, j = 0 -> [1, 0, 2].
  assert.deepEqual(Array.from(LCryptKey.prototype.permutation.call(forged, "p", "g", 3)), [1, 0, 2]);
});
