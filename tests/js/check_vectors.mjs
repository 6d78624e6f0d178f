// Checks every value of tests/vectors/v1.json against an implementation of the key spec.
//
// Shared by the Node tests and the Chromium test, so it imports nothing: the caller passes the module under test and
// a SHA-256 function. Returns a list of failures (empty when every value matches).

// x[c, h, w] = (7 * (c*H*W + h*W + w) + 3) mod 256, stored in (H, W, C) order for BlockCipher.
function plaintext(height, width, channels) {
  const hwc = new Uint8Array(height * width * channels);
  for (let c = 0; c < channels; c++) {
    for (let h = 0; h < height; h++) {
      for (let w = 0; w < width; w++) hwc[(h * width + w) * channels + c] = (7 * (c * height * width + h * width + w) + 3) % 256;
    }
  }
  return hwc;
}

function toChw(hwc, height, width, channels) {
  const chw = new Uint8Array(hwc.length);
  for (let c = 0; c < channels; c++) {
    for (let p = 0; p < height * width; p++) chw[c * height * width + p] = hwc[p * channels + c];
  }
  return chw;
}

const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
const same = (a, b) => a.length === b.length && Array.from(a).every((v, i) => Number(v) === Number(b[i]));

export async function checkVectors({ LCryptKey, BlockCipher }, sha256, vectors) {
  const failures = [];
  const expect = (ok, what) => {
    if (!ok) failures.push(what);
  };
  const keys = {};
  let count = 0;
  for (const entry of vectors.keys) {
    const key = LCryptKey.fromHex(entry.key_hex);
    keys[entry.name] = key;
    expect(key.toHex() === entry.key_hex, `${entry.name}: toHex`);
    expect(key.keyId === entry.key_id, `${entry.name}: key id ${key.keyId} != ${entry.key_id}`);
    if (entry.passphrase !== undefined) {
      const derived = await LCryptKey.fromPassphrase(entry.passphrase);
      expect(derived.toHex() === entry.key_hex, `${entry.name}: passphrase key`);
    }
    if (entry.parent !== undefined) {
      expect(keys[entry.parent].derive(entry.client_id).toHex() === entry.key_hex, `${entry.name}: derived key`);
    }
    for (const v of entry.vectors) {
      const name = `${entry.name} ${v.geometry}`;
      const cipher = new BlockCipher(key, { height: v.height, width: v.width, blockSize: v.block_size, channels: v.channels });
      expect(cipher.geometry === v.geometry, `${name}: geometry ${cipher.geometry}`);
      expect(same(cipher.pixelPerm, v.pixel_perm), `${name}: pixel_perm`);
      expect(same(cipher.flipMask, v.flip_mask), `${name}: flip_mask`);
      expect(same(cipher.blockPerm, v.block_perm), `${name}: block_perm`);
      const plain = plaintext(v.height, v.width, v.channels);
      const encrypted = cipher.encrypt(plain);
      const chw = toChw(encrypted, v.height, v.width, v.channels);
      expect(hex(await sha256(chw)) === v.ciphertext_sha256, `${name}: ciphertext SHA-256`);
      if (v.ciphertext_hex !== undefined) expect(hex(chw) === v.ciphertext_hex, `${name}: ciphertext bytes`);
      expect(same(cipher.decrypt(encrypted), plain), `${name}: decrypt(encrypt(x)) != x`);
      count += 1;
    }
  }
  if (count === 0) failures.push("no vectors were checked");
  return failures;
}
