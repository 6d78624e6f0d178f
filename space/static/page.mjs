// The Space's page: read, resize and encrypt in the browser; send only ciphertext PNGs to /classify_encrypted.
//
// The plain image, the key and the passphrase live in this module's variables and in inputs that no Gradio event
// reads; the only requests carry encrypted PNGs (upload), their server-side paths (call) and the event id (result).

import { BlockCipher, LCryptKey } from "./lcrypt.mjs";
import { decodeImage, resizeBilinear, rgbToRgba } from "./pixels.mjs";

// The "wrong key" is derived from the visitor's key, so that the same inputs always give the same page.
const WRONG_KEY_LABEL = "hf-lcrypt-space/wrong-key";
const NOISE_SEED = 0;

function apiUrl(path) {
  const root = (window.gradio_config && window.gradio_config.root) || window.location.origin;
  return new URL(path, root.endsWith("/") ? root : `${root}/`).href;
}

// -- pictures ---------------------------------------------------------------------------------------------------------
function draw(canvas, rgb, width, height) {
  canvas.width = width;
  canvas.height = height;
  canvas.getContext("2d").putImageData(new ImageData(rgbToRgba(rgb), width, height), 0, 0);
}

function png(canvas) {
  return new Promise((resolve, reject) =>
    canvas.toBlob((blob) => (blob ? resolve(blob) : reject(new Error("The browser could not encode a PNG."))), "image/png"),
  );
}

// -- noise and bit flips (a seeded generator for the demo; nothing secret depends on it) ---------------------------
function generator(seed) {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

/** Gaussian noise of standard deviation sigma (on the 0..1 scale), then each bit flipped with probability rate. */
function corrupt(pixels, sigma, rate) {
  const random = generator(NOISE_SEED);
  const out = Uint8Array.from(pixels);
  for (let i = 0; i < out.length; i++) {
    if (sigma > 0) {
      const gauss = Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random());
      out[i] = Math.min(255, Math.max(0, Math.round(out[i] + 255 * sigma * gauss)));
    }
    if (rate > 0) for (let bit = 0; bit < 8; bit++) if (random() < rate) out[i] ^= 1 << bit;
  }
  return out;
}

// -- the server: Gradio's HTTP API, called with ciphertext only -----------------------------------------------------
async function classifyEncrypted(blob, name) {
  const form = new FormData();
  form.append("files", blob, name);
  const uploaded = await fetch(apiUrl("gradio_api/upload"), { method: "POST", body: form });
  if (!uploaded.ok) throw new Error(`The upload failed (${uploaded.status}).`);
  const [path] = await uploaded.json();
  const call = await fetch(apiUrl("gradio_api/call/classify_encrypted"), {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ data: [{ path, orig_name: name, meta: { _type: "gradio.FileData" } }] }),
  });
  if (!call.ok) throw new Error(`The request failed (${call.status}).`);
  const { event_id: eventId } = await call.json();
  const stream = await (await fetch(apiUrl(`gradio_api/call/classify_encrypted/${eventId}`))).text();
  // Server-sent events: the last "event:" line says complete or error, the "data:" line after it the payload.
  const events = [...stream.matchAll(/^event: (\w+)\ndata: (.*)$/gm)];
  const last = events[events.length - 1];
  if (!last) throw new Error("The server sent no answer.");
  const data = JSON.parse(last[2]);
  if (last[1] !== "complete") throw new Error(typeof data === "string" && data ? data : "The server refused the image.");
  return data[0];
}

function showLabel(list, label) {
  list.replaceChildren(
    ...label.confidences.map(({ label: name, confidence }) => {
      const item = document.createElement("li");
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = `${(100 * confidence).toFixed(1)}%`;
      item.append(bar, `${name}: ${(100 * confidence).toFixed(1)} %`);
      return item;
    }),
  );
  list.dataset.label = label.label;
}

// -- the page -------------------------------------------------------------------------------------------------------
const UPLOAD_NAME = "ciphertext.png"; // every upload has the same name: the server cannot tell which one is yours

function start(root) {
  const settings = JSON.parse(root.dataset.settings);
  const [height, width] = settings.image_size;
  const geometry = { height, width, blockSize: settings.block_size, channels: 3, steps: settings.cipher_steps };
  const $ = (id) => root.querySelector(`#${id}`);
  let key = null;
  let source = null; // the decoded plain image, full size
  let encrypted = null;
  let generation = 0; // bumped whenever the image or the key changes: answers of an older one are dropped
  let sent = 0; // encrypted images sent for the current image and key

  const status = (text, error = false) => {
    $("status").textContent = text;
    $("status").classList.toggle("error", error);
  };
  const ready = () => {
    $("run").disabled = !(key && source);
  };
  const guard = (action) => async (event) => {
    try {
      await action(event);
    } catch (err) {
      status(err.message, true);
    }
  };
  /** Forget every answer and ciphertext: they belonged to another image or key. */
  const clearResults = () => {
    generation += 1;
    encrypted = null;
    sent = 0;
    for (const id of ["label-key", "label-wrong", "label-corrupted"]) {
      $(id).replaceChildren();
      delete $(id).dataset.label;
    }
    for (const id of ["cipher-view", "wrong-view", "corrupted-view"]) {
      const canvas = $(id);
      canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
    }
    status("");
  };
  const send = async (canvas, current) => {
    let label;
    try {
      label = await classifyEncrypted(await png(canvas), UPLOAD_NAME);
    } finally {
      if (current !== generation) throw new Stale(); // neither an answer nor an error of an older image or key
    }
    sent += 1;
    return label;
  };
  const setKey = (newKey, origin) => {
    clearResults();
    key = null;
    const keyStatus = $("key-status");
    keyStatus.classList.remove("refused");
    if (settings.key_id && newKey.keyId !== settings.key_id) {
      // As the command line does: another key's answers would be meaningless, so nothing is sent.
      keyStatus.textContent =
        `Key from ${origin} refused: its key_id is ${newKey.keyId}, but the served model expects key_id ` +
        `${settings.key_id}. Load the model's key (or its public demo key).`;
      keyStatus.classList.add("refused");
    } else {
      key = newKey;
      keyStatus.textContent = `Key from ${origin}: key_id ${key.keyId}, the model's key.`;
    }
    ready();
  };
  const setImage = async (blob) => {
    clearResults();
    source = null;
    ready();
    status("Reading the image...");
    source = await decodeImage(blob, settings.max_pixels);
    const plain = resizeBilinear(source.rgb, source.width, source.height, 3, width, height);
    draw($("plain-view"), plain, width, height);
    status(`Image read (${source.width}x${source.height}), resized to ${width}x${height} here.`);
    ready();
  };
  const sentStatus = () => {
    const images = sent === 1 ? "one encrypted image" : `${sent} encrypted images`;
    status(`Done: the server has seen ${images} of this picture, and never the picture itself.`);
  };

  if (settings.channels !== 3) {
    status(`This page encrypts RGB images; the served model takes ${settings.channels} channels.`, true);
    return;
  }
  $("plain-file").addEventListener(
    "change",
    guard(async (event) => {
      const canvas = $("plain-view");
      canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
      if (event.target.files[0]) await setImage(event.target.files[0]);
      else clearResults();
    }),
  );
  for (const example of settings.examples) {
    const button = document.createElement("button");
    button.textContent = example.name;
    button.addEventListener("click", guard(async () => setImage(await (await fetch(apiUrl(example.url.slice(1)))).blob())));
    $("examples").append(button);
  }
  $("key-file").addEventListener(
    "change",
    guard(async (event) => event.target.files[0] && setKey(LCryptKey.fromKeyFile(await event.target.files[0].text()), "your key file")),
  );
  $("use-hex").addEventListener("click", guard(async () => setKey(LCryptKey.fromHex($("key-hex").value), "the pasted hex")));
  $("use-passphrase").addEventListener(
    "click",
    guard(async () => {
      status("Deriving the key from the passphrase (scrypt)...");
      setKey(await LCryptKey.fromPassphrase($("passphrase").value), "your passphrase");
      status("Key derived.");
    }),
  );
  if (settings.demo_key) {
    $("demo-key").hidden = false;
    $("demo-key").addEventListener("click", guard(async () => setKey(LCryptKey.fromHex(settings.demo_key), "the PUBLIC demo key")));
  }

  const sendCorrupted = async () => {
    const sigma = Number($("sigma").value);
    const rate = Number($("rate").value);
    $("sigma-value").textContent = sigma;
    $("rate-value").textContent = rate;
    if (!encrypted) return;
    const current = generation;
    draw($("corrupted-view"), corrupt(encrypted, sigma, rate), width, height);
    showLabel($("label-corrupted"), await send($("corrupted-view"), current));
    sentStatus();
  };
  $("run").addEventListener(
    "click",
    guard(async () => {
      $("run").disabled = true;
      try {
        clearResults();
        const current = generation;
        status("Encrypting here, then sending the ciphertext...");
        const plain = resizeBilinear(source.rgb, source.width, source.height, 3, width, height);
        const mine = new BlockCipher(key, geometry).encrypt(plain);
        const wrong = new BlockCipher(key.derive(WRONG_KEY_LABEL), geometry).encrypt(plain);
        draw($("cipher-view"), mine, width, height);
        draw($("wrong-view"), wrong, width, height);
        const [right, other] = await Promise.all([send($("cipher-view"), current), send($("wrong-view"), current)]);
        showLabel($("label-key"), right);
        showLabel($("label-wrong"), other);
        encrypted = mine;
        await sendCorrupted();
      } catch (err) {
        if (!(err instanceof Stale)) throw err;
      } finally {
        ready();
      }
    }),
  );
  for (const id of ["sigma", "rate"]) {
    $(id).addEventListener(
      "change",
      guard(async () => {
        try {
          await sendCorrupted();
        } catch (err) {
          if (!(err instanceof Stale)) throw err;
        }
      }),
    );
  }
  root.dataset.ready = "true";
}

/** An answer that arrived after the image or the key changed: dropped, never shown. */
class Stale extends Error {}

// Gradio renders the page after this module loads: start once the app's markup is there.
function whenReady() {
  const root = document.querySelector("#lcrypt-app");
  if (root && !root.dataset.ready) start(root);
  else if (!root) requestAnimationFrame(whenReady);
}
whenReady();
