"""Attack suite, model half: adversarial examples, int8 weight bit flips, key recovery from weights, access control.

Every attack takes uint8 images (N,C,H,W), as `callbacks.load_plain_images` returns them, and a `Target`: a model
together with the input pipeline the key holder runs for it (cipher, then normalisation), so that a keyed model on
encrypted images and a plain model on plain images go through the same code.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, ViTForImageClassification

from ..cipher import BlockCipher
from ..keys import LCryptKey
from ..modeling_lcrypt import LCryptViTForImageClassification
from .cipher_attacks import RecoveredTransform, _sq_distances, progress, ssim

try:  # an optimal assignment where scipy is there (scikit-learn brings it); a greedy argmax otherwise
    from scipy.optimize import linear_sum_assignment
except ImportError:  # pragma: no cover
    linear_sum_assignment = None


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode for the duration, then the mode the model had."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


# -- targets ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """A classifier and how its inputs are made: pixels in [0,1], encrypted by `cipher` if any, then normalised."""

    model: PreTrainedModel
    image_mean: Sequence[float]
    image_std: Sequence[float]
    cipher: BlockCipher | None = None

    @classmethod
    def keyed(cls, model: LCryptViTForImageClassification, key: LCryptKey | str | bytes) -> Target:
        """A keyed model fed as its processor feeds it: encrypted with `key`, normalised with the folded mean/std."""
        config = model.config
        return cls(model, config.folded_image_mean, config.folded_image_std, model.cipher(key))

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images -> the model's input domain in [0,1] (encrypted when the target has a cipher)."""
        x = images.float() / 255
        return self.cipher.encrypt(x) if self.cipher is not None else x

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of inputs in [0,1]; differentiable in x (the normalisation is part of the graph)."""
        param = next(self.model.parameters())
        mean = torch.as_tensor(self.image_mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.as_tensor(self.image_std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        pixels = ((x - mean) / std).to(param.device, param.dtype)
        return self.model(pixel_values=pixels).logits.float().to(x.device)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        with evaluating(self.model):
            return torch.cat([self.logits(chunk).argmax(-1) for chunk in x.split(batch_size)])

    def accuracy(self, x: torch.Tensor, labels: torch.Tensor, batch_size: int = 64) -> float:
        return (self.predict(x, batch_size) == labels).float().mean().item()

    def score(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 64) -> float:
        """Accuracy on uint8 images put through this target's input pipeline."""
        return self.accuracy(self.inputs(images), labels, batch_size)


def with_key(cipher: BlockCipher, key: LCryptKey) -> BlockCipher:
    """A cipher of the same geometry and steps under another key."""
    return BlockCipher(key, (cipher.height, cipher.width), cipher.block_size, cipher.channels, cipher.steps)


# -- adversarial examples -----------------------------------------------------------------------------------------
def pgd(
    target: Target,
    x: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """L-infinity PGD (Madry et al. 2018) on inputs x in [0,1] of the target's domain: stays within eps of x and in
    [0,1]. The step defaults to 2.5 eps / steps; `fgsm` is the one-step case."""
    step_size = 2.5 * eps / steps if step_size is None else step_size
    adv = x.clone()
    if random_start:
        noise = torch.rand(x.shape, generator=generator, device=generator.device if generator else x.device)
        adv = (adv + (2 * noise.to(x.device) - 1) * eps).clamp(0, 1)
    with evaluating(target.model):
        for _ in range(steps):
            adv.requires_grad_(True)
            loss = F.cross_entropy(target.logits(adv), labels)
            (grad,) = torch.autograd.grad(loss, adv)
            adv = torch.minimum(torch.maximum(adv.detach() + step_size * grad.sign(), x - eps), x + eps).clamp(0, 1)
    return adv.detach()


def fgsm(target: Target, x: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
    """Fast gradient sign method (Goodfellow et al. 2015): one step of eps along the gradient's sign."""
    return pgd(target, x, labels, eps, steps=1, step_size=eps)


def _to_domain(x: torch.Tensor, source: Target, dest: Target) -> torch.Tensor:
    """Inputs of `source` as `dest` gets them: the key holder decrypts (if needed) and encrypts with dest's key."""
    if source.cipher is dest.cipher:
        return x
    plain = source.cipher.decrypt(x) if source.cipher is not None else x
    return dest.cipher.encrypt(plain) if dest.cipher is not None else plain


def adversarial_accuracy(
    craft: Target,
    images: torch.Tensor,
    labels: torch.Tensor,
    epsilons: Sequence[float],
    steps: int = 1,
    evaluate: Target | None = None,
    batch_size: int = 64,
) -> list[float]:
    """Accuracy against epsilon (pixel units in [0,1]) of examples crafted white-box on `craft`'s own inputs.

    `steps=1` is FGSM, more is PGD. The examples are classified by `evaluate` (default: `craft` itself, a white-box
    attack); with a plain `craft` and a keyed `evaluate` the key holder encrypts the plain adversarial images: a
    transfer attack. Epsilon 0 gives the clean accuracy.
    """
    evaluate = evaluate or craft
    correct = torch.zeros(len(epsilons))
    chunks = list(zip(images.split(batch_size), labels.split(batch_size), strict=True))
    for chunk, y in progress(chunks, f"{'fgsm' if steps == 1 else 'pgd'} batches"):
        x = craft.inputs(chunk)
        for i, eps in enumerate(epsilons):
            adv = x if eps == 0 else pgd(craft, x, y, eps, steps, step_size=eps if steps == 1 else None)
            correct[i] += (evaluate.predict(_to_domain(adv, craft, evaluate), batch_size) == y).sum()
    return (correct / len(labels)).tolist()


# -- int8 weights and bit flips -------------------------------------------------------------------------------------
_BIT_VALUES = torch.tensor([1, 2, 4, 8, 16, 32, 64, -128], dtype=torch.float32)  # two's complement int8
_POPCOUNT = torch.tensor([bin(i).count("1") for i in range(256)])


class Int8Weights:
    """Simulated int8 weights of a model, changed in place: every Linear and Conv2d weight is quantised symmetrically
    per tensor (scale = max|w| / 127) and written back dequantised, so the float forward computes what the int8 model
    would. Bits are flipped in the int8 copies (two's complement), which are then dequantised again.

    Bits are numbered globally: bit b of element e of layer l is `8 * (offset[l] + e) + b`.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        layers = [
            (f"{name}.weight", m.weight) for name, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)
        ]
        self.names = [name for name, _ in layers]
        self.params = [param for _, param in layers]
        with torch.no_grad():
            self.scales = [param.detach().abs().max().clamp_min(1e-12) / 127 for param in self.params]
            self.original = [
                (param.detach() / scale).round().clamp(-127, 127).to(torch.int8)
                for param, scale in zip(self.params, self.scales, strict=True)
            ]
        self.q = [t.clone() for t in self.original]
        sizes = torch.tensor([t.numel() for t in self.q])
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])
        self.num_bits = 8 * int(self.offsets[-1])
        self._write(range(len(self.q)))

    @torch.no_grad()
    def _write(self, layers: Iterable[int]) -> None:
        for layer in layers:
            self.params[layer].copy_(self.q[layer].to(self.params[layer].dtype) * self.scales[layer])

    def reset(self) -> None:
        """Back to the quantised weights, no bit flipped."""
        self.q = [t.clone() for t in self.original]
        self._write(range(len(self.q)))

    def flip(self, bits: torch.Tensor | np.ndarray | Sequence[int]) -> None:
        """Flip the given global bits, which must be distinct (several may share a weight)."""
        bits = torch.as_tensor(np.asarray(bits), dtype=torch.long).reshape(-1)
        if bits.unique().numel() != bits.numel():
            raise ValueError("The bits to flip must be distinct: flipping a bit twice in one call is ambiguous.")
        element, bit = bits // 8, bits % 8
        layer = torch.searchsorted(self.offsets, element, right=True) - 1
        touched = layer.unique().tolist()
        for index in touched:
            mine = layer == index
            weights, inverse = (element[mine] - self.offsets[index]).unique(return_inverse=True)
            # Distinct bits of one weight: their masks are distinct powers of two, so summing them combines them.
            masks = torch.zeros(len(weights), dtype=torch.int32).index_add_(0, inverse, (1 << bit[mine]).int())
            flat = self.q[index].view(-1).view(torch.uint8)
            flat[weights] ^= masks.to(torch.uint8)
        self._write(touched)

    def flipped_bits(self) -> int:
        """Hamming distance from the quantised weights: how many bits differ now."""
        return sum(
            int(_POPCOUNT[(q.view(torch.uint8) ^ o.view(torch.uint8)).long()].sum())
            for q, o in zip(self.q, self.original, strict=True)
        )

    def bit_gains(self, grads: Sequence[torch.Tensor], k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per layer, the k bits whose flip raises the loss most to first order (gradient x change of the weight),
        as (gains, global bits), each (layers, k)."""
        gains, bits = [], []
        for index, (q, grad) in enumerate(zip(self.q, grads, strict=True)):
            state = (q.view(-1).view(torch.uint8)[:, None] >> torch.arange(8, dtype=torch.uint8)) & 1
            delta = torch.where(state.bool(), -_BIT_VALUES, _BIT_VALUES) * self.scales[index]
            gain = (grad.reshape(-1, 1).float() * delta).reshape(-1)
            top = gain.topk(min(k, gain.numel()))
            gains.append(top.values)
            bits.append(top.indices + 8 * self.offsets[index])
        return torch.stack(gains), torch.stack(bits)


def _quantised_copy(target: Target) -> tuple[Target, Int8Weights]:
    model = copy.deepcopy(target.model).eval()
    weights = Int8Weights(model)
    return replace(target, model=model), weights


def random_bit_flips(
    target: Target,
    images: torch.Tensor,
    labels: torch.Tensor,
    counts: Sequence[int],
    trials: int = 3,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Accuracy of the int8-quantised model after N bit flips drawn uniformly over all weight bits, for each N of
    `counts` (nested draws: the first N of one random order), averaged over `trials` draws. N = 0 is the quantised
    model's accuracy."""
    quantised, weights = _quantised_copy(target)
    x = target.inputs(images)
    rng = np.random.default_rng(seed)
    counts = sorted(counts)
    runs = []
    for _ in progress(range(trials), "random bit flips"):
        weights.reset()
        order = rng.choice(weights.num_bits, size=counts[-1], replace=False)
        accuracy, done = [], 0
        for count in counts:
            weights.flip(order[done:count])
            done = count
            accuracy.append(quantised.accuracy(x, labels, batch_size))
        runs.append(accuracy)
    runs = np.asarray(runs)
    return {
        "flips": counts,
        "accuracy": runs.mean(0).tolist(),
        "accuracy_std": runs.std(0).tolist(),
        "trials": trials,
        "num_bits": weights.num_bits,
    }


def bit_flip_search(
    target: Target,
    attack_images: torch.Tensor,
    attack_labels: torch.Tensor,
    eval_images: torch.Tensor,
    eval_labels: torch.Tensor,
    max_flips: int = 10,
    top_layers: int = 8,
    candidates: int = 2,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Progressive bit search in the style of Rakin et al. (ICCV 2019, "Bit-Flip Attack") on the int8 model.

    Each iteration takes the loss gradient on the attack batch, ranks every weight bit by gradient x the weight
    change its flip makes, keeps the `candidates` best bits of each of the `top_layers` most promising layers, tries
    each (flip, measure the attack loss, flip back), and keeps the one flip that raises the loss most: exactly one
    bit per iteration, `max_flips` iterations. Returns the accuracy on the evaluation images after each flip count.
    """
    quantised, weights = _quantised_copy(target)
    x_attack, x_eval = target.inputs(attack_images), target.inputs(eval_images)

    def attack_loss() -> torch.Tensor:
        return F.cross_entropy(quantised.logits(x_attack), attack_labels)

    history = {"flips": [0], "accuracy": [quantised.accuracy(x_eval, eval_labels, batch_size)], "loss": [], "bits": []}
    with torch.no_grad():
        history["loss"].append(attack_loss().item())
    for flip in progress(range(1, max_flips + 1), "bit search"):
        grads = torch.autograd.grad(attack_loss(), weights.params)
        gains, bits = weights.bit_gains(grads, candidates)
        layers = gains[:, 0].topk(min(top_layers, len(gains))).indices
        best_loss, best_bit = -float("inf"), None
        with torch.no_grad():
            for bit in bits[layers].reshape(-1).tolist():
                weights.flip([bit])
                loss = attack_loss().item()
                weights.flip([bit])
                if loss > best_loss:
                    best_loss, best_bit = loss, bit
        weights.flip([best_bit])
        element = best_bit // 8
        layer = int(torch.searchsorted(weights.offsets, torch.tensor(element), right=True)) - 1
        history["bits"].append(
            {"layer": weights.names[layer], "index": element - int(weights.offsets[layer]), "bit": best_bit % 8}
        )
        history["flips"].append(flip)
        history["loss"].append(best_loss)
        history["accuracy"].append(quantised.accuracy(x_eval, eval_labels, batch_size))
    history["flipped_bits"] = weights.flipped_bits()
    return history


# -- key recovery from published weights ------------------------------------------------------------------------------
@dataclass(frozen=True)
class WeightRecovery:
    """The cipher transform read off a keyed model's embeddings by comparing them with the plain checkpoint's.

    `pixel_perm`, `flip_mask` and `block_perm` follow `BlockCipher`'s conventions; `column_similarity` is the
    smallest |cosine| between a keyed patch-embedding column and its matched plain column (1 for an untouched fold).
    """

    pixel_perm: np.ndarray
    flip_mask: np.ndarray
    block_perm: np.ndarray
    column_similarity: float

    def transform(self, cipher_like: BlockCipher) -> RecoveredTransform:
        """The recovered transform for images of `cipher_like`'s (public) geometry."""
        shape = (cipher_like.height, cipher_like.width, cipher_like.channels)
        return RecoveredTransform.from_block_parts(
            shape, cipher_like.block_size, self.pixel_perm, self.flip_mask, self.block_perm
        )


def _assign(score: np.ndarray) -> np.ndarray:
    """For each row, the column it is matched to, maximising the total score (a bijection with scipy)."""
    if linear_sum_assignment is None:  # pragma: no cover
        return score.argmax(axis=1)
    rows, cols = linear_sum_assignment(score, maximize=True)
    return cols[np.argsort(rows)]


def _embeddings(model: ViTForImageClassification) -> tuple[np.ndarray, np.ndarray]:
    """(patch-embedding weight as (hidden, C*M*M), position embeddings without the CLS row), in float64."""
    weight, positions = LCryptViTForImageClassification.key_bearing_parameters(model)
    weight, positions = weight.detach().double().cpu(), positions.detach().double().cpu()
    return weight.reshape(weight.shape[0], -1).numpy(), positions[0, 1:].numpy()


def recover_key_from_weights(
    keyed: LCryptViTForImageClassification, plain: ViTForImageClassification
) -> WeightRecovery:
    """Recover the key's transform from a keyed model folded from a known plain checkpoint, without images.

    Folding scales and permutes the patch-embedding columns (keyed column k = scale_k x plain column perm[k], the
    scale negative where flipped) and permutes the non-CLS position-embedding rows by the block permutation. So each
    keyed column is matched to the plain column of largest |cosine| (the sign gives the flip) and each position row
    to the nearest plain row, both as optimal one-to-one assignments.
    """
    keyed_w, keyed_pos = _embeddings(keyed)
    plain_w, plain_pos = _embeddings(plain)
    unit_k = keyed_w / np.linalg.norm(keyed_w, axis=0).clip(1e-12)
    unit_p = plain_w / np.linalg.norm(plain_w, axis=0).clip(1e-12)
    cosine = unit_k.T @ unit_p  # [k, p]
    pixel_perm = _assign(np.abs(cosine))
    matched = cosine[np.arange(len(pixel_perm)), pixel_perm]
    distance = _sq_distances(keyed_pos, plain_pos)  # (N, N) without an (N, N, hidden) intermediate
    return WeightRecovery(pixel_perm, matched < 0, _assign(-distance), float(np.abs(matched).min()))


def weight_recovery_experiment(
    keyed: LCryptViTForImageClassification,
    plain: ViTForImageClassification,
    cipher: BlockCipher,
    unseen: np.ndarray,
) -> dict[str, float]:
    """Recover the transform from the weights, score it against the true `cipher`, and decrypt the ciphertexts of
    `unseen` uint8 images (k, H, W, C) with it: shares of in-block values, flips, blocks and all positions right, and
    the decryptions' exact share and mean SSIM."""
    recovered = recover_key_from_weights(keyed, plain)
    transform = recovered.transform(cipher)
    truth = RecoveredTransform.from_block_parts(
        transform.shape, cipher.block_size, cipher.pixel_perm, cipher.flip_mask, cipher.block_perm
    )
    decrypted = transform.decrypt(cipher.encrypt(unseen))
    return {
        "pixel_perm_correct": float((recovered.pixel_perm == cipher.pixel_perm).mean()),
        "flip_correct": float((recovered.flip_mask == cipher.flip_mask).mean()),
        "block_perm_correct": float((recovered.block_perm == cipher.block_perm).mean()),
        "positions_correct": float(((transform.index == truth.index) & (transform.flip == truth.flip)).mean()),
        "column_similarity": recovered.column_similarity,
        "decrypted_exact": float(np.mean([np.array_equal(d, u) for d, u in zip(decrypted, unseen, strict=True)])),
        "decrypted_ssim": float(np.mean([ssim(d, u) for d, u in zip(decrypted, unseen, strict=True)])),
    }


def finetuning_defence(
    keyed: LCryptViTForImageClassification,
    plain: ViTForImageClassification,
    key: LCryptKey,
    images: torch.Tensor,
    labels: torch.Tensor,
    steps: Sequence[int],
    lr: float = 1e-3,
    batch_size: int = 32,
    seed: int = 0,
) -> dict[str, Any]:
    """Weight-recovery scores after fine-tuning a copy of the keyed model on encrypted images for each number of
    `steps` (AdamW, constant `lr`, minibatches drawn from `images`), with the patch embedding's relative change.

    Shows how far training after folding moves the weights from the public checkpoint they were folded from.
    """
    model = copy.deepcopy(keyed)
    target = Target.keyed(model, key)
    x, unseen = target.inputs(images), images.permute(0, 2, 3, 1).numpy()
    patch_weight = LCryptViTForImageClassification.key_bearing_parameters(model)[0]
    start = patch_weight.detach().clone()
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    results: dict[str, Any] = {"steps": sorted(steps), "patch_weight_change": []}
    done = 0
    for count in progress(results["steps"], "fine-tuning"):
        model.train()
        for _ in range(count - done):
            batch = torch.randint(len(x), (min(batch_size, len(x)),), generator=generator)
            loss = F.cross_entropy(target.logits(x[batch]), labels[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        done = count
        model.eval()
        current = patch_weight.detach()
        results["patch_weight_change"].append(((current - start).norm() / start.norm()).item())
        for name, value in weight_recovery_experiment(model, plain, target.cipher, unseen).items():
            results.setdefault(name, []).append(value)
    return results


# -- access control ---------------------------------------------------------------------------------------------------
def wrong_keys(count: int, seed: int = 0) -> list[LCryptKey]:
    """`count` reproducible keys that are not anyone's secret (hashes of a public label)."""
    return [LCryptKey(hashlib.sha256(f"hf-lcrypt/attack/wrong-key/{seed}/{i}".encode()).digest()) for i in range(count)]


def access_control(
    target: Target,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_wrong_keys: int = 5,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Accuracy of a keyed target with its key, on plain images, and with `num_wrong_keys` other keys, next to the
    chance (1 / classes) and majority-class rates that a model without the right key should not beat."""
    if target.cipher is None:
        raise ValueError("access_control needs a keyed target (Target.keyed(model, key)).")
    wrong = [
        replace(target, cipher=with_key(target.cipher, key)).score(images, labels, batch_size)
        for key in progress(wrong_keys(num_wrong_keys, seed), "wrong keys")
    ]
    counts = torch.bincount(labels, minlength=target.model.config.num_labels)
    return {
        "right_key": target.score(images, labels, batch_size),
        "plain_images": replace(target, cipher=None).score(images, labels, batch_size),
        "wrong_keys": wrong,
        "wrong_key_mean": float(np.mean(wrong)),
        "chance": 1 / len(counts),
        "majority_class": (counts.max() / counts.sum()).item(),
    }
