// The page's resize (space/static/pixels.mjs) against PIL's BILINEAR resize, which LCryptImageProcessor uses.
import assert from "node:assert/strict";
import { test } from "node:test";

import { resizeBilinear, rgbaToRgb, rgbToRgba } from "../../space/static/pixels.mjs";
import { assertSameBytes, b64, pythonReference, randomBytes, unb64 } from "./reference.mjs";

test("byte for byte PIL's bilinear resize: shrinking, enlarging, odd ratios and one axis only", () => {
  const sizes = [
    // [width, height, channels, outWidth, outHeight]
    [224, 224, 3, 32, 32],
    [224, 224, 3, 224, 224],
    [512, 384, 3, 224, 224],
    [128, 128, 3, 224, 224],
    [97, 61, 3, 28, 28],
    [300, 200, 1, 64, 64],
    [640, 480, 3, 200, 200],
    [50, 80, 3, 50, 33],
    [5, 3, 3, 7, 11],
  ];
  const inputs = sizes.map(([w, h, c], i) => {
    // Half smooth gradients, half noise: both the filter weights and their rounding are exercised.
    const noise = randomBytes(w * h * c, i + 11);
    return noise.map((v, p) => (p % 2 ? v : (Math.floor(p / c) % w) * 3 + Math.floor(p / c / w)) & 255);
  });
  const answers = pythonReference(
    sizes.map(([width, height, channels, outWidth, outHeight], i) => ({
      op: "resize", width, height, channels, out_width: outWidth, out_height: outHeight, pixels: b64(inputs[i]),
    })),
  );
  sizes.forEach(([w, h, c, ow, oh], i) => {
    const ours = resizeBilinear(inputs[i], w, h, c, ow, oh);
    assert.equal(ours.length, ow * oh * c);
    assertSameBytes(ours, unb64(answers[i]), `${w}x${h}x${c} -> ${ow}x${oh}`);
  });
});

test("RGBA <-> RGB and clear errors", () => {
  const rgba = Uint8ClampedArray.from([1, 2, 3, 40, 5, 6, 7, 255]);
  assert.deepEqual(rgbaToRgb(rgba), Uint8Array.from([1, 2, 3, 5, 6, 7]));
  assert.deepEqual(rgbToRgba(Uint8Array.from([1, 2, 3])), Uint8ClampedArray.from([1, 2, 3, 255]));
  assert.throws(() => resizeBilinear(new Uint8Array(10), 2, 2, 3, 1, 1), /Expected 12 values for 2x2x3, got 10/);
  assert.throws(() => resizeBilinear(new Uint8Array(12), 2, 2, 3, 0, 1), /outWidth must be a positive integer/);
});
