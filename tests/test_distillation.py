"""Distillation from a key holder's teacher and mixup on ciphertext: the losses, and why both keep the key foldable."""

import pickle

import pytest
import torch
import torch.nn.functional as F
from helpers import IMAGENET_MEAN, IMAGENET_STD, tiny_vit
from PIL import Image

from hf_lcrypt import LCryptImageProcessor, LCryptKey, LCryptViTForImageClassification
from hf_lcrypt.training import HALF
from hf_lcrypt.training.distillation import TEACHER_INPUTS, distillation_loss
from hf_lcrypt.training.transforms import ImageTransform, Mixup


@pytest.fixture
def logits(seeded):
    return torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1]), torch.randn(6, 4)


def test_without_teacher_or_weight_the_loss_is_cross_entropy(logits):
    student, labels, teacher = logits
    expected = F.cross_entropy(student, labels, label_smoothing=0.1)
    assert torch.allclose(distillation_loss(student, labels, label_smoothing=0.1), expected)
    assert torch.allclose(distillation_loss(student, labels, teacher, alpha=0.0, label_smoothing=0.1), expected)


def test_hard_distillation_learns_the_teachers_predicted_class(logits):
    student, labels, teacher = logits
    loss = distillation_loss(student, labels, teacher, alpha=0.25, kind="hard")
    expected = 0.75 * F.cross_entropy(student, labels) + 0.25 * F.cross_entropy(student, teacher.argmax(-1))
    assert torch.allclose(loss, expected)


def test_soft_distillation_vanishes_when_the_student_matches_the_teacher(logits):
    student, labels, _ = logits
    loss = distillation_loss(student, labels, student.clone(), alpha=0.5, kind="soft", temperature=3.0)
    assert torch.allclose(loss, 0.5 * F.cross_entropy(student, labels), atol=1e-6)
    assert distillation_loss(student, labels, -student, alpha=1.0, kind="soft", temperature=3.0) > 0.1


def test_soft_labels_as_class_probabilities_match_class_ids(logits):
    student, labels, _ = logits
    one_hot = F.one_hot(labels, 4).float()
    assert torch.allclose(distillation_loss(student, one_hot), distillation_loss(student, labels))


def test_unknown_distillation_is_refused(logits):
    with pytest.raises(ValueError, match="hard"):
        distillation_loss(*logits, kind="medium")


@pytest.fixture
def images(seeded) -> list[Image.Image]:
    return [Image.fromarray(torch.randint(0, 256, (40, 40, 3), dtype=torch.uint8).numpy()) for _ in range(6)]


@pytest.mark.parametrize("mean,std", [(HALF, HALF), (IMAGENET_MEAN, IMAGENET_STD)], ids=["half", "imagenet"])
def test_mixup_of_ciphertexts_is_the_encryption_of_mixed_images(images, mean, std):
    """The keyed model on mixed ciphertexts predicts as the plain model on the same mixes of the plain images: mixing
    commutes with the cipher (an affine map of the pixels, the same for every image) for any normalisation."""
    key = LCryptKey.from_hex("00" * 31 + "07")
    plain = tiny_vit(image_size=32, patch_size=8)
    keyed = LCryptViTForImageClassification.from_plain(plain, key, image_mean=mean, image_std=std).eval()
    geometry = {"image_size": 32, "block_size": 8, "image_mean": list(mean), "image_std": list(std)}
    transform = ImageTransform(
        LCryptImageProcessor(**geometry, key=key),
        teacher=LCryptImageProcessor(**geometry, do_encrypt=False),
        mixup=Mixup(alpha=1.0, num_classes=4),
    )
    torch.manual_seed(1)
    batch = transform({"image": images, "label": [0, 1, 2, 3, 0, 1]})
    assert not torch.equal(batch["pixel_values"], transform.processor(images, return_tensors="pt")["pixel_values"])
    with torch.no_grad():
        keyed_logits = keyed(pixel_values=batch["pixel_values"]).logits
        plain_logits = plain(pixel_values=batch[TEACHER_INPUTS]).logits
    assert torch.allclose(keyed_logits, plain_logits, atol=1e-4)
    assert batch["labels"].shape == (6, 4)
    assert torch.allclose(batch["labels"].sum(-1), torch.ones(6))
    assert (batch["labels"].max(-1).values < 1).any()  # some images really are mixed


def test_transform_with_teacher_and_mixup_pickles_without_the_secret(images):
    key = LCryptKey.from_hex("ab" * 32)
    geometry = {"image_size": 32, "block_size": 8, "image_mean": list(HALF), "image_std": list(HALF)}
    transform = ImageTransform(
        LCryptImageProcessor(**geometry, key=key),
        teacher=LCryptImageProcessor(**geometry, key=key, cipher_steps=[]),
        mixup=Mixup(alpha=0.2, num_classes=4),
    )
    state = pickle.dumps(transform)
    assert key.to_hex().encode() not in state and key.to_bytes() not in state
    restored = pickle.loads(state)
    assert restored.mixup == transform.mixup
    assert restored.teacher.to_dict() == transform.teacher.to_dict()
