// hf-lcrypt keys and block cipher in the browser: docs/key-spec.md, version 1.
//
// A second implementation of hf_lcrypt/keys.py and hf_lcrypt/cipher.py (uint8 images), checked byte for byte against
// tests/vectors/v1.json and the Python cipher. Hashing comes from the vendored, audited @noble/hashes; nothing here
// is a hand-written primitive. Keys never leave this module except through `toHex()` and `toKeyFile()`.

import { hmac } from "./vendor/noble-hashes/hmac.js";
import { scryptAsync } from "./vendor/noble-hashes/scrypt.js";
import { sha256 } from "./vendor/noble-hashes/sha2.js";
import { shake256 } from "./vendor/noble-hashes/sha3.js";

export const SPEC_VERSION = 1;
export const KEY_BYTES = 32;
export const SCRYPT = Object.freeze({ N: 2 ** 15, r: 8, p: 1, dkLen: KEY_BYTES });
export const MIN_PASSPHRASE_CHARS = 12; // keys.MIN_PASSPHRASE_CHARS in the Python library
export const PIXEL_SHUFFLE = "pixel_shuffle";
export const NEGATIVE_POSITIVE = "negative_positive";
export const BLOCK_SCRAMBLE = "block_scramble";
export const ALL_STEPS = Object.freeze([PIXEL_SHUFFLE, NEGATIVE_POSITIVE, BLOCK_SCRAMBLE]);

const PREFIX = "hf-lcrypt/v1";
const PURPOSES = { pixelShuffle: "pixel-shuffle", negativePositive: "negative-positive", blockScramble: "block-scramble" };
const utf8 = (text) => new TextEncoder().encode(text);

function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

// field(b) = u32be(len(b)) || b: no two different inputs encode to the same bytes.
function field(bytes) {
  const out = new Uint8Array(4 + bytes.length);
  new DataView(out.buffer).setUint32(0, bytes.length, false);
  out.set(bytes, 4);
  return out;
}

function toHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function geometryLabel(height, width, blockSize, channels) {
  return `H=${height};W=${width};M=${blockSize};C=${channels}`;
}

/** A 256-bit secret key. Printing or serialising it shows only the public `keyId`. */
export class LCryptKey {
  #secret;

  constructor(secret) {
    if (!(secret instanceof Uint8Array)) {
      throw new TypeError("LCryptKey needs a Uint8Array; use LCryptKey.fromHex for a hex string.");
    }
    if (secret.length !== KEY_BYTES) {
      throw new Error(
        `An LCryptKey is ${KEY_BYTES} bytes (${KEY_BYTES * 8} bits), got ${secret.length} bytes. ` +
          "Use LCryptKey.generate() for a new key or LCryptKey.fromPassphrase() to derive one from a phrase.",
      );
    }
    this.#secret = Uint8Array.from(secret);
    Object.freeze(this);
  }

  /** A fresh random key from the platform's CSPRNG (crypto.getRandomValues). */
  static generate() {
    return new LCryptKey(globalThis.crypto.getRandomValues(new Uint8Array(KEY_BYTES)));
  }

  /** 64 hex digits (either case); white space around them is ignored. The message never repeats the input. */
  static fromHex(text) {
    if (typeof text !== "string") throw new TypeError("LCryptKey.fromHex needs a string of 64 hex digits.");
    const hex = text.trim();
    if (!/^[0-9a-fA-F]*$/.test(hex)) {
      throw new Error(
        `A key in hex is ${KEY_BYTES * 2} hexadecimal characters; got ${hex.length} characters that are not all ` +
          "hex digits.",
      );
    }
    if (hex.length !== KEY_BYTES * 2) {
      throw new Error(`A key in hex is ${KEY_BYTES * 2} hexadecimal characters, got ${hex.length}.`);
    }
    return new LCryptKey(Uint8Array.from(hex.match(/../g), (pair) => parseInt(pair, 16)));
  }

  /** The content of a key file (as `hf-lcrypt keygen` writes it). */
  static fromKeyFile(text) {
    try {
      return LCryptKey.fromHex(text);
    } catch (err) {
      throw new Error(`This is not an hf-lcrypt key file: ${err.message}`);
    }
  }

  /**
   * scrypt(N=2**15, r=8, p=1) with the spec's fixed public salt; the phrase is used as typed (no normalisation).
   * Phrases under MIN_PASSPHRASE_CHARS characters are refused unless `allowShort`, as in the Python library.
   */
  static async fromPassphrase(passphrase, { allowShort = false } = {}) {
    if (typeof passphrase !== "string") throw new TypeError("The passphrase must be a string.");
    if (!passphrase) throw new Error("The passphrase is empty; choose a long phrase or use LCryptKey.generate().");
    const length = [...passphrase].length; // characters (code points), as Python's len() counts them
    if (length < MIN_PASSPHRASE_CHARS && !allowShort) {
      throw new Error(
        `The passphrase has ${length} characters, under the minimum of ${MIN_PASSPHRASE_CHARS}: anyone can try ` +
          "short phrases quickly, since the derivation is public. Choose a longer phrase, or use LCryptKey.generate().",
      );
    }
    return new LCryptKey(await scryptAsync(utf8(passphrase), utf8(`${PREFIX}/passphrase`), SCRYPT));
  }

  toHex() {
    return toHex(this.#secret);
  }

  /** The text of a key file: the hex secret and a newline. */
  toKeyFile() {
    return `${this.toHex()}\n`;
  }

  /** An independent subkey for one client: HMAC-SHA256(secret, field("hf-lcrypt/v1/derive") || field(client_id)). */
  derive(clientId) {
    if (typeof clientId !== "string" || !clientId) {
      throw new Error("clientId is empty; give each client a distinct, non-empty name.");
    }
    return new LCryptKey(hmac(sha256, this.#secret, concat([field(utf8(`${PREFIX}/derive`)), field(utf8(clientId))])));
  }

  /** Public fingerprint (16 hex characters): identifies the key without revealing it. */
  get keyId() {
    return toHex(hmac(sha256, this.#secret, utf8(`${PREFIX}/key-id`))).slice(0, 16);
  }

  /** `nbytes` bytes of SHAKE-256(field(prefix) || field(purpose) || field(geometry) || field(secret)). */
  stream(purpose, geometry, nbytes) {
    const input = concat([field(utf8(PREFIX)), field(utf8(purpose)), field(utf8(geometry)), field(this.#secret)]);
    return shake256(input, { dkLen: nbytes });
  }

  /** Fisher-Yates over 0..n-1, each index drawn as a 32-bit big-endian integer with rejection sampling. */
  permutation(purpose, geometry, n) {
    const perm = new Uint32Array(n);
    for (let i = 0; i < n; i++) perm[i] = i;
    let chunk = 4 * n + 64;
    let buf = this.stream(purpose, geometry, chunk);
    let pos = 0;
    for (let i = n - 1; i > 0; i--) {
      const bound = i + 1;
      const limit = 2 ** 32 - (2 ** 32 % bound);
      let r;
      do {
        if (pos + 4 > buf.length) {
          chunk *= 2; // a longer read starts with the bytes of the shorter one
          buf = this.stream(purpose, geometry, chunk);
        }
        r = ((buf[pos] << 24) >>> 0) + (buf[pos + 1] << 16) + (buf[pos + 2] << 8) + buf[pos + 3];
        pos += 4;
      } while (r >= limit);
      const j = r % bound;
      [perm[i], perm[j]] = [perm[j], perm[i]];
    }
    return perm;
  }

  /** n key-chosen bits (0 or 1): bit k is bit k mod 8, least significant first, of stream byte k div 8. */
  mask(purpose, geometry, n) {
    const raw = this.stream(purpose, geometry, Math.ceil(n / 8));
    return Uint8Array.from({ length: n }, (_, k) => (raw[k >> 3] >> (k & 7)) & 1);
  }

  equals(other) {
    return other instanceof LCryptKey && other.toHex() === this.toHex();
  }

  toString() {
    return `LCryptKey(keyId=${this.keyId})`;
  }

  toJSON() {
    return { keyId: this.keyId };
  }

  [Symbol.for("nodejs.util.inspect.custom")]() {
    return this.toString();
  }
}

function positiveInt(value, name) {
  if (!Number.isInteger(value) || value < 1) throw new Error(`${name} must be a positive integer, got ${value}.`);
  return value;
}

/**
 * Encrypt and decrypt uint8 images with a key, block by block: pixel shuffling, negative-positive flips and block
 * scrambling, as hf_lcrypt.BlockCipher does. Pixels are interleaved (H, W, C), as in a canvas's RGB values.
 */
export class BlockCipher {
  constructor(key, { height, width, blockSize, channels = 3, steps = ALL_STEPS } = {}) {
    if (!(key instanceof LCryptKey)) throw new TypeError("BlockCipher needs an LCryptKey as its first argument.");
    this.height = positiveInt(height, "height");
    this.width = positiveInt(width, "width");
    this.blockSize = positiveInt(blockSize, "blockSize");
    this.channels = positiveInt(channels, "channels");
    const wanted = [...steps];
    const unknown = wanted.filter((s) => !ALL_STEPS.includes(s));
    if (unknown.length) throw new Error(`Unknown cipher step(s) ${unknown}; choose from ${ALL_STEPS.join(", ")}.`);
    this.steps = ALL_STEPS.filter((s) => wanted.includes(s));
    const m = this.blockSize;
    if (height % m || width % m) {
      throw new Error(
        `Block size ${m} does not divide the image size ${height}x${width}; resize the images to a multiple of ` +
          `${m} or choose a block size that divides both sides.`,
      );
    }
    this.keyId = key.keyId;
    this.geometry = geometryLabel(height, width, m, this.channels);
    const blocks = (height / m) * (width / m);
    const dim = this.channels * m * m;
    const identity = (n) => Uint32Array.from({ length: n }, (_, i) => i);
    this.pixelPerm = this.steps.includes(PIXEL_SHUFFLE)
      ? key.permutation(PURPOSES.pixelShuffle, this.geometry, dim)
      : identity(dim);
    this.flipMask = this.steps.includes(NEGATIVE_POSITIVE)
      ? key.mask(PURPOSES.negativePositive, this.geometry, dim)
      : new Uint8Array(dim);
    this.blockPerm = this.steps.includes(BLOCK_SCRAMBLE)
      ? key.permutation(PURPOSES.blockScramble, this.geometry, blocks)
      : identity(blocks);
    [this.source, this.flip] = this.#plan();
  }

  // For every (H, W, C) position p of the ciphertext: the plaintext position it comes from and whether it flips.
  #plan() {
    const { width: w, blockSize: m, channels: c } = this;
    const gridWidth = w / m;
    const position = (block, k) => {
      const ch = Math.floor(k / (m * m));
      const row = Math.floor(k / m) % m;
      const col = k % m;
      const y = Math.floor(block / gridWidth) * m + row;
      const x = (block % gridWidth) * m + col;
      return (y * w + x) * c + ch;
    };
    const length = this.height * w * c;
    const source = new Uint32Array(length);
    const flip = new Uint8Array(length);
    for (let n = 0; n < this.blockPerm.length; n++) {
      for (let k = 0; k < this.pixelPerm.length; k++) {
        const p = position(n, k);
        source[p] = position(this.blockPerm[n], this.pixelPerm[k]);
        flip[p] = this.flipMask[k] ? 255 : 0;
      }
    }
    return [source, flip];
  }

  #check(pixels) {
    if (!(pixels instanceof Uint8Array || pixels instanceof Uint8ClampedArray)) {
      throw new TypeError("Pixels must be a Uint8Array or Uint8ClampedArray of (H, W, C) values 0..255.");
    }
    const expected = this.height * this.width * this.channels;
    if (pixels.length !== expected) {
      throw new Error(
        `Expected ${expected} values (${this.height}x${this.width}x${this.channels}, (H, W, C) order), got ` +
          `${pixels.length}; resize the image to ${this.height}x${this.width} and drop the alpha channel.`,
      );
    }
  }

  /** The ciphertext of an (H, W, C) uint8 image, as a new Uint8Array. */
  encrypt(pixels) {
    this.#check(pixels);
    const out = new Uint8Array(pixels.length);
    for (let p = 0; p < out.length; p++) out[p] = pixels[this.source[p]] ^ this.flip[p];
    return out;
  }

  /** The exact inverse of `encrypt`. */
  decrypt(pixels) {
    this.#check(pixels);
    const out = new Uint8Array(pixels.length);
    for (let p = 0; p < out.length; p++) out[this.source[p]] = pixels[p] ^ this.flip[p];
    return out;
  }

  toString() {
    return `BlockCipher(keyId=${this.keyId}, ${this.geometry}, steps=${this.steps.join(",")})`;
  }
}
