// Pixels in the browser as the Python processor sees them: decoding as PIL does, and Pillow's bilinear resize of
// 8-bit images, exactly (`Image.resize(size, Image.Resampling.BILINEAR)`).
//
// LCryptImageProcessor resizes with PIL before it encrypts. A canvas's own scaling filters differ from PIL's, so a
// page that resized with the canvas would send the model slightly different pixels than the Python processor.
// This port of Pillow's src/libImaging/Resample.c (coefficients in double precision, rounded to 22-bit fixed point,
// a horizontal pass with 8-bit rounding, then a vertical pass) gives the same bytes; tests/js/pixels.test.mjs checks
// it against PIL on random images and sizes.

const PRECISION_BITS = 32 - 8 - 2;
const SUPPORT = 1.0; // the bilinear (triangle) filter

function bilinear(x) {
  const a = Math.abs(x);
  return a < 1.0 ? 1.0 - a : 0.0;
}

// For each output index: the first input index, the number of inputs, and their fixed-point weights.
function coefficients(inSize, outSize) {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1.0); // antialias when shrinking: the filter widens with the scale
  const support = SUPPORT * filterScale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const weights = new Float64Array(outSize * ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1.0 / filterScale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const count = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    let total = 0.0;
    const k = new Float64Array(count);
    for (let x = 0; x < count; x++) {
      k[x] = bilinear((x + xmin - center + 0.5) * ss);
      total += k[x];
    }
    for (let x = 0; x < count; x++) {
      const w = total !== 0.0 ? k[x] / total : k[x];
      weights[xx * ksize + x] = Math.trunc(w < 0 ? -0.5 + w * (1 << PRECISION_BITS) : 0.5 + w * (1 << PRECISION_BITS));
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = count;
  }
  return { bounds, weights, ksize };
}

function clip8(sum) {
  if (sum >= 1 << (PRECISION_BITS + 8)) return 255;
  if (sum <= 0) return 0;
  return Math.floor(sum / (1 << PRECISION_BITS));
}

// One separable pass along x (stride = channels) or y (stride = width * channels) of an interleaved image.
function pass(src, width, height, channels, outSize, horizontal) {
  const { bounds, weights, ksize } = coefficients(horizontal ? width : height, outSize);
  const outWidth = horizontal ? outSize : width;
  const outHeight = horizontal ? height : outSize;
  const out = new Uint8Array(outWidth * outHeight * channels);
  const half = 1 << (PRECISION_BITS - 1);
  for (let y = 0; y < outHeight; y++) {
    for (let x = 0; x < outWidth; x++) {
      const i = horizontal ? x : y;
      const start = bounds[i * 2];
      const count = bounds[i * 2 + 1];
      for (let c = 0; c < channels; c++) {
        let sum = half;
        for (let t = 0; t < count; t++) {
          const index = horizontal ? (y * width + start + t) * channels + c : ((start + t) * width + x) * channels + c;
          sum += src[index] * weights[i * ksize + t];
        }
        out[(y * outWidth + x) * channels + c] = clip8(sum);
      }
    }
  }
  return out;
}

/**
 * Resize interleaved (H, W, C) uint8 pixels to outWidth x outHeight as PIL's BILINEAR resampling does.
 * Returns a new Uint8Array (a copy when the size is unchanged, as PIL returns a copy).
 */
export function resizeBilinear(pixels, width, height, channels, outWidth, outHeight) {
  for (const [name, value] of Object.entries({ width, height, channels, outWidth, outHeight })) {
    if (!Number.isInteger(value) || value < 1) throw new Error(`${name} must be a positive integer, got ${value}.`);
  }
  if (pixels.length !== width * height * channels) {
    throw new Error(`Expected ${width * height * channels} values for ${width}x${height}x${channels}, got ${pixels.length}.`);
  }
  let out = Uint8Array.from(pixels);
  if (outWidth !== width) out = pass(out, width, height, channels, outWidth, true);
  if (outHeight !== height) out = pass(out, outWidth, height, channels, outHeight, false);
  return out;
}

/** Drop the alpha channel of canvas RGBA data, as PIL's `convert("RGB")` does (no blending). */
export function rgbaToRgb(rgba) {
  const rgb = new Uint8Array((rgba.length / 4) * 3);
  for (let p = 0, q = 0; p < rgba.length; p += 4, q += 3) {
    rgb[q] = rgba[p];
    rgb[q + 1] = rgba[p + 1];
    rgb[q + 2] = rgba[p + 2];
  }
  return rgb;
}

/** Add an opaque alpha channel, for a canvas's ImageData. */
export function rgbToRgba(rgb) {
  const rgba = new Uint8ClampedArray((rgb.length / 3) * 4);
  for (let p = 0, q = 0; q < rgb.length; p += 4, q += 3) {
    rgba[p] = rgb[q];
    rgba[p + 1] = rgb[q + 1];
    rgba[p + 2] = rgb[q + 2];
    rgba[p + 3] = 255;
  }
  return rgba;
}

/**
 * An image file's pixels as (H, W, 3) RGB, decoded as PIL decodes it: no colour management (an embedded profile or
 * gamma is not applied), no premultiplied alpha, and the alpha channel dropped as `convert("RGB")` does.
 */
export async function decodeImage(blob, maxPixels = Infinity) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  } catch {
    throw new Error("That file is not an image this browser can read; choose a PNG or JPEG.");
  }
  const { width, height } = bitmap;
  if (width * height > maxPixels) {
    bitmap.close();
    throw new Error(`That image is ${width}x${height}; choose one of at most ${maxPixels / 1e6} megapixels.`);
  }
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(bitmap, 0, 0);
  bitmap.close();
  return { rgb: rgbaToRgb(context.getImageData(0, 0, width, height).data), width, height };
}
