"""Key folding: a keyed ViT on encrypted images must reproduce the plain ViT on plain images exactly."""

import json

import pytest
import torch
from helpers import IMAGENET_MEAN, IMAGENET_STD, tiny_vit
from transformers import ResNetConfig, ResNetForImageClassification, ViTImageProcessorPil

from hf_lcrypt import LCryptKey, LCryptViTConfig, LCryptViTForImageClassification
from hf_lcrypt.cipher import BLOCK_SCRAMBLE, PIXEL_SHUFFLE

HALF = (0.5, 0.5, 0.5)


def normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def logits(model, x):
    with torch.no_grad():
        return model(x).logits


@pytest.mark.parametrize(
    ("image_size", "patch_size", "hidden", "layers", "mean", "std", "patch_mlp"),
    [
        (32, 8, 48, 2, IMAGENET_MEAN, IMAGENET_STD, None),
        (32, 8, 48, 2, HALF, HALF, None),
        (64, 16, 96, 3, IMAGENET_MEAN, IMAGENET_STD, None),
        (200, 25, 48, 1, HALF, HALF, None),  # the seed paper's geometry: 64 blocks of 25x25x3
        (224, 16, 48, 1, IMAGENET_MEAN, IMAGENET_STD, None),
        (32, 8, 48, 2, IMAGENET_MEAN, IMAGENET_STD, 96),  # MLP patch embedding
        (64, 16, 96, 2, HALF, HALF, 64),
    ],
)
def test_keyed_model_on_encrypted_equals_plain_model(
    seeded, image_size, patch_size, hidden, layers, mean, std, patch_mlp
):
    plain = tiny_vit(image_size, patch_size, hidden, layers, patch_mlp=patch_mlp)
    key = LCryptKey.generate()
    keyed = LCryptViTForImageClassification.from_plain(plain, key, image_mean=mean, image_std=std).eval()
    cipher = keyed.cipher(key)
    x = torch.rand(3, 3, image_size, image_size)

    reference = logits(plain, normalise(x, mean, std))
    assert torch.allclose(logits(keyed, normalise(cipher.encrypt(x), mean, std)), reference, atol=1e-4, rtol=0)
    # Plain images into the keyed model, and a wrong key, do not reproduce the plain model.
    assert (logits(keyed, normalise(x, mean, std)) - reference).abs().max() > 1e-3
    wrong = keyed.cipher(LCryptKey.generate())
    assert (logits(keyed, normalise(wrong.encrypt(x), mean, std)) - reference).abs().max() > 1e-3


def test_keyed_normalisation_may_differ_from_plain(seeded):
    plain = tiny_vit()
    key = LCryptKey.generate()
    keyed = LCryptViTForImageClassification.from_plain(
        plain, key, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, keyed_image_mean=HALF, keyed_image_std=HALF
    ).eval()
    x = torch.rand(2, 3, 32, 32)
    expected = logits(plain, normalise(x, IMAGENET_MEAN, IMAGENET_STD))
    got = logits(keyed, normalise(keyed.cipher(key).encrypt(x), HALF, HALF))
    assert torch.allclose(got, expected, atol=1e-4, rtol=0)
    assert keyed.config.folded_image_mean == list(HALF)


@pytest.mark.parametrize("steps", [(PIXEL_SHUFFLE,), (BLOCK_SCRAMBLE,), ()])
def test_partial_steps_fold_exactly(seeded, steps):
    plain = tiny_vit()
    key = LCryptKey.generate()
    keyed = LCryptViTForImageClassification.from_plain(plain, key, image_mean=HALF, image_std=HALF, steps=steps)
    x = torch.rand(2, 3, 32, 32)
    got = logits(keyed.eval(), normalise(keyed.cipher(key).encrypt(x), HALF, HALF))
    assert torch.allclose(got, logits(plain, normalise(x, HALF, HALF)), atol=1e-4, rtol=0)
    assert keyed.config.cipher_steps == list(steps)


@pytest.mark.parametrize("patch_mlp", [None, 96])
def test_rekey_moves_to_a_new_key_without_retraining(seeded, patch_mlp):
    plain = tiny_vit(patch_mlp=patch_mlp)
    master = LCryptKey.generate()
    keyed = LCryptViTForImageClassification.from_plain(plain, master, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    client = master.derive("hospital-a")
    keyed.rekey(client)
    assert keyed.config.key_id == client.key_id
    x = torch.rand(2, 3, 32, 32)
    expected = logits(plain, normalise(x, IMAGENET_MEAN, IMAGENET_STD))
    got = logits(keyed.eval(), normalise(keyed.cipher(client).encrypt(x), IMAGENET_MEAN, IMAGENET_STD))
    assert torch.allclose(got, expected, atol=1e-4, rtol=0)


def test_rekey_after_loading_needs_the_current_key(seeded, tmp_path):
    key = LCryptKey.generate()
    LCryptViTForImageClassification.from_plain(tiny_vit(), key, image_mean=HALF, image_std=HALF).save_pretrained(
        tmp_path
    )
    loaded = LCryptViTForImageClassification.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="current_key"):
        loaded.rekey(LCryptKey.generate())
    with pytest.raises(ValueError, match="key_id"):
        loaded.rekey(LCryptKey.generate(), current_key=LCryptKey.generate())
    new = LCryptKey.generate()
    loaded.rekey(new, current_key=key)
    assert loaded.config.key_id == new.key_id


@pytest.mark.parametrize("patch_mlp", [None, 96])
def test_save_and_load_account_for_every_weight(seeded, tmp_path, patch_mlp):
    key = LCryptKey.generate()
    plain = tiny_vit(patch_mlp=patch_mlp)
    keyed = LCryptViTForImageClassification.from_plain(plain, key, image_mean=HALF, image_std=HALF).eval()
    keyed.save_pretrained(tmp_path)
    loaded, info = LCryptViTForImageClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set() and info["mismatched_keys"] == set()
    for name, tensor in keyed.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    x = normalise(keyed.cipher(key).encrypt(torch.rand(2, 3, 32, 32)), HALF, HALF)
    assert torch.equal(logits(loaded.eval(), x), logits(keyed, x))
    assert loaded.config.key_id == key.key_id


@pytest.mark.parametrize("patch_mlp", [None, 96])
def test_from_plain_by_path_reads_the_checkpoints_normalisation(seeded, tmp_path, patch_mlp):
    plain = tiny_vit(patch_mlp=patch_mlp)
    plain.save_pretrained(tmp_path)
    ViTImageProcessorPil(
        size={"height": 32, "width": 32}, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD
    ).save_pretrained(tmp_path)
    key = LCryptKey.generate()
    keyed = LCryptViTForImageClassification.from_plain(str(tmp_path), key).eval()
    assert keyed.config.folded_image_mean == pytest.approx(IMAGENET_MEAN)
    x = torch.rand(2, 3, 32, 32)
    got = logits(keyed, normalise(keyed.cipher(key).encrypt(x), IMAGENET_MEAN, IMAGENET_STD))
    assert torch.allclose(got, logits(plain, normalise(x, IMAGENET_MEAN, IMAGENET_STD)), atol=1e-4, rtol=0)


def test_mlp_patch_embedding_is_initialised_like_the_rest(seeded):
    embedding = tiny_vit(patch_mlp=96).vit.embeddings.patch_embeddings
    assert embedding.projection.out_channels == 96 and embedding.out_proj.out_features == 48
    std = LCryptViTConfig(image_size=32, patch_size=8).initializer_range
    for layer in (embedding.projection, embedding.out_proj):  # the ViT's init, not PyTorch's kaiming default
        assert layer.weight.std().item() == pytest.approx(std, rel=0.15)
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
    with pytest.raises(Exception, match="patch_embedding_mlp_size"):
        LCryptViTConfig(image_size=32, patch_size=8, patch_embedding_mlp_size=0)


def test_from_plain_leaves_the_plain_model_untouched(seeded):
    plain = tiny_vit()
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    LCryptViTForImageClassification.from_plain(plain, LCryptKey.generate(), image_mean=HALF, image_std=HALF)
    assert all(torch.equal(before[k], v) for k, v in plain.state_dict().items())


def test_from_plain_refuses_what_cannot_absorb_a_key(seeded):
    key = LCryptKey.generate()
    cnn = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 8], depths=[1, 1], num_labels=2))
    with pytest.raises(TypeError, match="Convolutional"):
        LCryptViTForImageClassification.from_plain(cnn, key, image_mean=HALF, image_std=HALF)
    keyed = LCryptViTForImageClassification.from_plain(tiny_vit(), key, image_mean=HALF, image_std=HALF)
    with pytest.raises(TypeError, match="rekey"):
        LCryptViTForImageClassification.from_plain(keyed, key, image_mean=HALF, image_std=HALF)
    with pytest.raises(ValueError, match="image_mean and image_std"):
        LCryptViTForImageClassification.from_plain(tiny_vit(), key)


def test_interpolated_position_encodings_are_refused(seeded):
    keyed = LCryptViTForImageClassification.from_plain(
        tiny_vit(), LCryptKey.generate(), image_mean=HALF, image_std=HALF
    )
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        keyed(torch.rand(1, 3, 48, 48), interpolate_pos_encoding=True)


def test_config_validation_and_no_secret():
    with pytest.raises(Exception, match="block_size"):
        LCryptViTConfig(image_size=32, patch_size=8, block_size=4)
    with pytest.raises(Exception, match="not a multiple"):
        LCryptViTConfig(image_size=30, patch_size=8)
    with pytest.raises(Exception, match="Unknown cipher step"):
        LCryptViTConfig(image_size=32, patch_size=8, cipher_steps=["rot13"])
    with pytest.raises(Exception, match="key_id"):
        LCryptViTConfig(image_size=32, patch_size=8, key_id="not-a-fingerprint")
    with pytest.raises(Exception):  # noqa: B017 - strict dataclass type check
        LCryptViTConfig(image_size=32, patch_size=8, block_size="8")
    key = LCryptKey.generate()
    config = LCryptViTForImageClassification.from_plain(tiny_vit(), key, image_mean=HALF, image_std=HALF).config
    assert key.to_hex() not in config.to_json_string()
    assert config.key_id == key.key_id


def test_block_size_is_the_patch_size_and_saved_configs_still_load(tmp_path):
    config = LCryptViTConfig(image_size=32, patch_size=8)
    assert config.block_size == 8 and config.to_dict()["block_size"] == 8
    with pytest.raises(AttributeError):
        config.block_size = 4
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["block_size"] == 8 and not any(name.startswith("_") for name in saved)
    saved.update(patch_size=4, block_size=4)  # a config.json written when block_size was a field of its own
    (tmp_path / "config.json").write_text(json.dumps(saved))
    loaded = LCryptViTConfig.from_pretrained(tmp_path)
    assert loaded.block_size == loaded.patch_size == 4
    saved["block_size"] = 8
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(Exception, match="block_size"):
        LCryptViTConfig.from_pretrained(tmp_path)


def test_the_model_code_changes_no_global_state_of_transformers():
    """The remote-code model registers no weight-name conversion (a process-wide table every Hub user shares)."""
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping

    import hf_lcrypt.modeling_lcrypt  # noqa: F401

    for name in ("LCryptViTModel", "LCryptViTForImageClassification", "lcrypt-vit"):
        assert get_checkpoint_conversion_mapping(name) is None
