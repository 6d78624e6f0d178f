"""The plain and the adaptive weights-only attacks on one keyed model (or checkpoint) folder, scored with its key,
and the block layout read through the first layer's attention instead of the position embeddings' own similarity:
the query-key logits between the position rows (all heads together, then each head), placed by both searches.
Prints JSON (docs/security.md, D rows).

    python experiments/weights_only_compare.py outputs/mri64-new-10ep/model outputs/mri64-new.key
"""

import json
import sys
import time

import torch

from hf_lcrypt import LCryptKey, LCryptViTForImageClassification
from hf_lcrypt.attacks.weights_only import (
    _embeddings,
    _neighbours_kept,
    _position_similarity,
    align_to_key,
    chance_scores,
    leak_thresholds,
    place_on_grid,
    place_on_grid_adaptive,
    recover_key_from_weights_alone,
)

model = LCryptViTForImageClassification.from_pretrained(sys.argv[1]).eval()
key = LCryptKey.load(sys.argv[2])
cipher = model.cipher(key)
out = {"model": sys.argv[1], "chance": chance_scores(cipher), "thresholds": leak_thresholds(cipher)}
for adaptive in (False, True):
    t = time.time()
    _, scores = align_to_key(recover_key_from_weights_alone(model, adaptive=adaptive), cipher)
    out["adaptive" if adaptive else "old"] = {**scores, "seconds": time.time() - t}
# Block adjacency through the first layer's attention logits between position rows.
_, positions = _embeddings(model)
layer = model.vit.layers[0]
heads = model.config.num_attention_heads
with torch.no_grad():
    x = layer.layernorm_before(torch.from_numpy(positions).float())
    q, k = layer.attention.q_proj(x), layer.attention.k_proj(x)
    logits = (q @ k.T).double().numpy()
    per_head = [(qh @ kh.T).double().numpy() for qh, kh in zip(q.chunk(heads, -1), k.chunk(heads, -1), strict=True)]
sims = {"positions": _position_similarity(positions), "attention": (logits + logits.T) / 2}
sims.update({f"head{h}": (a + a.T) / 2 for h, a in enumerate(per_head)})
for name, sim in sims.items():
    for label, place in (("old", place_on_grid), ("adaptive", place_on_grid_adaptive)):
        guess = place(sim, cipher.grid)
        out[f"blocks_{name}_{label}"] = _neighbours_kept(guess, cipher.block_perm, cipher.grid)
print(json.dumps(out, indent=1))
