"""The attack suite: what the cipher and a keyed model hide, and what they do not (docs/security.md).

- `corruptions`: noise and bit flips on ciphertexts, and the one table of their families and default strengths;
- `cipher_attacks`: the cipher alone (metrics, jigsaw solver, known plaintext);
- `model_attacks`: keyed models (adversarial examples, weight bit flips, key recovery from weights, access control);
- `weights_only`: what a keyed model's weights alone reveal about its key;
- `suite`: the robustness checks run during training (`AttackSuite`, `AttackEvalCallback`);
- `report`: `hf-lcrypt attack`, any subset of the above on one image sample, written as one `AttackReport`;
- `plots`: the reports' PNG figures.

Only the catalogue of attack names is defined here, so that the command line can list them without importing torch.
"""

# Attacks that need a keyed model, in the order `hf-lcrypt attack` runs them by default.
MODEL_ATTACKS = (
    "noise",
    "bitflip",
    "msb",
    "fgsm",
    "pgd",
    "transfer",
    "weights-random",
    "weights-search",
    "weights-recovery",
    "weights-only",
    "weights-only-adaptive",
    "access",
)
# Attacks on the cipher alone: a key and a geometry suffice.
CIPHER_ATTACKS = ("jigsaw", "known-plaintext", "metrics")
ATTACK_NAMES = MODEL_ATTACKS + CIPHER_ATTACKS
