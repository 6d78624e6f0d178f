"""Attack suite, model half: adversarial examples, int8 weight bit flips, key recovery from weights, access control,
and the `hf-lcrypt attack` report."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers import IMAGENET_MEAN, IMAGENET_STD, tiny_vit
from PIL import Image
from transformers import ViTForImageClassification

from hf_lcrypt import LCryptImageProcessor, LCryptKey, LCryptViTForImageClassification
from hf_lcrypt.attacks import report as report_module
from hf_lcrypt.attacks.model_attacks import (
    Int8Weights,
    Target,
    access_control,
    adversarial_accuracy,
    bit_flip_search,
    fgsm,
    finetuning_defence,
    pgd,
    random_bit_flips,
    weight_recovery_experiment,
)
from hf_lcrypt.attacks.record import AttackReport
from hf_lcrypt.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

KEY = LCryptKey(bytes(range(32)))


def diverse_vit(seed: int = 0):
    """A random tiny ViT whose predictions vary between images (a wide initialisation), so attacks can hurt it."""
    torch.manual_seed(seed)
    model = tiny_vit(32, 8, 48, 2)
    model.config.initializer_range = 1.0
    model.apply(model._init_weights)
    return model.eval()


@pytest.fixture(scope="module")
def setup():
    """A plain model, its keyed fold, and 16 random images labelled with the plain model's own predictions (so both
    models start at accuracy 1)."""
    plain = diverse_vit()
    keyed = LCryptViTForImageClassification.from_plain(plain, KEY, IMAGENET_MEAN, IMAGENET_STD).eval()
    plain_target = Target(plain, IMAGENET_MEAN, IMAGENET_STD)
    keyed_target = Target.keyed(keyed, KEY)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = plain_target.predict(plain_target.inputs(images))
    assert len(labels.unique()) > 1
    return plain_target, keyed_target, images, labels


# -- adversarial examples ---------------------------------------------------------------------------------------------
def test_adversarial_examples_stay_in_the_epsilon_ball_and_hurt(setup):
    plain, _, images, labels = setup
    x = plain.inputs(images)
    for adv in (fgsm(plain, x, labels, 4 / 255), pgd(plain, x, labels, 4 / 255, steps=3, random_start=True)):
        assert (adv - x).abs().max() <= 4 / 255 + 1e-6
        assert adv.min() >= 0 and adv.max() <= 1
        assert not torch.equal(adv, x)
    fgsm_acc, pgd_acc = (adversarial_accuracy(plain, images, labels, [0, 16 / 255], steps) for steps in (1, 5))
    assert fgsm_acc[0] == pgd_acc[0] == 1.0
    assert pgd_acc[1] < 0.5 and pgd_acc[1] <= fgsm_acc[1]


def test_white_box_in_the_encrypted_domain_is_the_white_box_attack_on_the_plain_model(setup):
    plain, keyed, images, labels = setup
    x = plain.inputs(images)
    adv_plain = pgd(plain, x, labels, 4 / 255, steps=3)
    adv_keyed = pgd(keyed, keyed.cipher.encrypt(x), labels, 4 / 255, steps=3)
    # The cipher is a bijection folded into the weights: the attack moves the same pixels the same way.
    close = (keyed.cipher.encrypt(adv_plain) - adv_keyed).abs() < 1e-5
    assert close.float().mean() > 0.999
    epsilons = [0, 2 / 255, 8 / 255]
    for steps in (1, 3):
        assert adversarial_accuracy(keyed, images, labels, epsilons, steps) == pytest.approx(
            adversarial_accuracy(plain, images, labels, epsilons, steps), abs=1 / 16
        )


def test_transfer_from_the_folded_plain_model_is_as_strong_as_white_box(setup):
    plain, keyed, images, labels = setup
    epsilons = [0, 8 / 255]
    transferred = adversarial_accuracy(plain, images, labels, epsilons, steps=3, evaluate=keyed)
    assert transferred == pytest.approx(adversarial_accuracy(plain, images, labels, epsilons, steps=3), abs=1 / 16)
    assert transferred[1] < transferred[0]


# -- int8 weights and bit flips ---------------------------------------------------------------------------------------
def test_int8_weights_quantise_and_flip_in_twos_complement():
    model = diverse_vit()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    weights = Int8Weights(model)
    assert "classifier.weight" in weights.names and "vit.embeddings.patch_embeddings.projection.weight" in weights.names
    for param, scale in zip(weights.params, weights.scales, strict=True):
        name = next(n for n, p in model.named_parameters() if p is param)
        assert (param - before[name]).abs().max() <= scale / 2 + 1e-7
    assert weights.num_bits == 8 * sum(p.numel() for p in weights.params)

    layer = weights.names.index("classifier.weight")
    q = weights.q[layer].view(-1)
    element = int((q > 0).nonzero()[0])
    value = int(q[element])
    msb = 8 * (int(weights.offsets[layer]) + element) + 7
    weights.flip([msb, msb - 7])  # the sign bit and the lowest bit of one weight
    assert int(weights.q[layer].view(-1)[element]) == (value ^ 1) - 128
    assert weights.params[layer].view(-1)[element].item() == pytest.approx(
        ((value ^ 1) - 128) * weights.scales[layer].item()
    )
    assert weights.flipped_bits() == 2
    weights.flip([msb])
    assert weights.flipped_bits() == 1
    weights.reset()
    assert weights.flipped_bits() == 0


def test_random_bit_flips_are_reproducible_and_leave_the_model_alone(setup):
    plain, _, images, labels = setup
    state = {k: v.clone() for k, v in plain.model.state_dict().items()}
    first = random_bit_flips(plain, images, labels, [0, 10, 20000], trials=2, seed=1)
    assert first == random_bit_flips(plain, images, labels, [0, 10, 20000], trials=2, seed=1)
    assert first["flips"] == [0, 10, 20000] and len(first["accuracy"]) == 3
    assert first["accuracy"][0] >= 0.75  # int8 quantisation alone changes few predictions
    assert all(torch.equal(v, plain.model.state_dict()[k]) for k, v in state.items())


def test_bit_flip_search_never_flips_more_bits_than_asked_and_beats_random_flips(setup):
    _, keyed, images, labels = setup
    result = bit_flip_search(keyed, images[:8], labels[:8], images, labels, max_flips=4, top_layers=4)
    assert result["flips"] == [0, 1, 2, 3, 4]
    assert len(result["bits"]) == 4 and result["flipped_bits"] <= 4
    assert result["loss"][-1] > result["loss"][0]
    random = random_bit_flips(keyed, images, labels, [4], trials=3)
    assert result["accuracy"][-1] < random["accuracy"][0]


# -- key recovery from weights ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [None, ["pixel_shuffle", "block_scramble"]])
def test_weights_folded_from_a_known_checkpoint_give_the_key_away(steps):
    plain = diverse_vit(1)
    kwargs = {} if steps is None else {"steps": steps}
    keyed = LCryptViTForImageClassification.from_plain(plain, KEY, IMAGENET_MEAN, IMAGENET_STD, **kwargs)
    unseen = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    result = weight_recovery_experiment(keyed, plain, keyed.cipher(KEY), unseen)
    for name in ("pixel_perm_correct", "flip_correct", "block_perm_correct", "positions_correct", "decrypted_exact"):
        assert result[name] == 1.0, name
    assert result["decrypted_ssim"] == pytest.approx(1.0)
    # Against a checkpoint it was not folded from, the recovery is near chance.
    other = weight_recovery_experiment(keyed, diverse_vit(2), keyed.cipher(KEY), unseen)
    assert other["positions_correct"] < 0.1 and other["decrypted_exact"] == 0.0


def test_fine_tuning_after_folding_moves_the_weights_away(setup):
    plain, keyed, images, labels = setup
    result = finetuning_defence(keyed.model, plain.model, KEY, images, labels, steps=[0, 3], lr=1e-2, batch_size=8)
    assert result["steps"] == [0, 3]
    assert result["patch_weight_change"][0] == 0.0 < result["patch_weight_change"][1]
    assert result["positions_correct"][0] == 1.0
    assert result["column_similarity"][1] < result["column_similarity"][0]


def test_to_plain_returns_the_plain_model_the_key_was_folded_into(setup):
    plain, keyed, _, _ = setup
    back = keyed.model.to_plain(KEY)
    assert type(back) is ViTForImageClassification
    reference = plain.model.state_dict()
    assert all(torch.allclose(v, reference[k], atol=1e-5) for k, v in back.state_dict().items())


def test_to_plain_gives_back_an_mlp_patch_embedding_too():
    torch.manual_seed(0)
    plain = tiny_vit(32, 8, 48, 2, patch_mlp=96)
    keyed = LCryptViTForImageClassification.from_plain(plain, KEY, IMAGENET_MEAN, IMAGENET_STD).eval()
    back = keyed.to_plain(KEY)
    assert type(back) is LCryptViTForImageClassification and back.config.key_id is None
    reference = plain.state_dict()
    assert back.state_dict().keys() == reference.keys()
    assert all(torch.allclose(v, reference[k], atol=1e-5) for k, v in back.state_dict().items())


# -- access control ---------------------------------------------------------------------------------------------------
def test_without_the_key_the_model_is_near_chance(setup):
    _, keyed, images, labels = setup
    result = access_control(keyed, images, labels, num_wrong_keys=3)
    assert result["right_key"] == 1.0
    assert len(result["wrong_keys"]) == 3 and result["wrong_key_mean"] < 0.7
    assert result["plain_images"] < 0.7
    assert result["chance"] == 0.25
    with pytest.raises(ValueError, match="keyed target"):
        access_control(replace(keyed, cipher=None), images, labels)


# -- the report and the command line ---------------------------------------------------------------------------------
@pytest.fixture
def saved_model(tmp_path, setup):
    """A folded tiny model saved like the training script saves it, its key file, and class folders of PNGs."""
    _, keyed, images, _ = setup
    model_dir = tmp_path / "model"
    keyed.model.save_pretrained(model_dir)
    LCryptImageProcessor.for_model(keyed.model).save_pretrained(model_dir)
    key_file = KEY.save(tmp_path / "k.key")
    for i, image in enumerate(images[:12]):
        folder = tmp_path / "data" / f"class_{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    return model_dir, key_file, tmp_path / "data"


def test_attack_command_writes_the_report(tmp_path, saved_model, capsys, monkeypatch):
    model_dir, key_file, data = saved_model
    monkeypatch.setattr(report_module, "FINETUNE_STEPS", (0, 2))
    monkeypatch.setattr(report_module, "EPSILONS", (0.0, 8 / 255))
    out = tmp_path / "report"
    argv = ["attack", "--model", model_dir, "--data", data, "--key-file", key_file, "--out", out, "--split", "train"]
    attacks = "access,fgsm,transfer,weights-recovery,noise,metrics"
    assert main([str(a) for a in [*argv, "--attacks", attacks, "--max-images", "8"]]) == 0
    printed = "".join(capsys.readouterr())
    assert KEY.to_hex() not in printed

    report = json.loads((out / "attack_report.json").read_text())
    assert list(report["attacks"]) == attacks.split(",")
    assert report["key_id"] == KEY.key_id and report["num_images"] == 8
    assert "--attacks access,fgsm" in report["sources"]["command"]
    assert KEY.to_hex() not in (out / "attack_report.json").read_text()
    # The same schema as training's report: the accuracy table by condition, which model cards read.
    typed = AttackReport.read(out)
    access = report["attacks"]["access"]
    assert typed.accuracy["clean"] == access["right_key"] and typed.accuracy["wrong_key"] == access["wrong_key_mean"]
    assert [name for name, _ in typed.ordered_accuracies()][:3] == ["clean", "wrong_key", "plain"]
    assert set(typed.accuracy) > {"noise_0.02", "noise_0.2"}
    fgsm_curves = report["attacks"]["fgsm"]["accuracy"]
    assert fgsm_curves["keyed model, encrypted inputs"] == pytest.approx(fgsm_curves["plain model, plain inputs"])
    assert report["attacks"]["weights-recovery"]["fresh_fold"]["decrypted_exact"] == 1.0
    markdown = (out / "attack_report.md").read_text()
    rows = [line.strip("|").split("|") for line in markdown.splitlines() if line.startswith("| ")]
    assert {row[0].strip() for row in rows[1:]} == set(attacks.split(","))  # a table row (or more) per attack
    access = {row[1].strip(): row[2].strip() for row in rows if row[0].strip() == "access"}
    assert float(access["right_key"]) == pytest.approx(report["attacks"]["access"]["right_key"], abs=1e-3)
    for figure in ("fgsm", "transfer", "weights-recovery", "weights-recovery-finetuning", "noise"):
        with Image.open(out / f"{figure}.png") as plot:
            pixels = np.asarray(plot.convert("RGB")).reshape(-1, 3).astype(int)
        if figure == "weights-recovery":  # a grid of images: most of the page is drawn on, not white
            assert (pixels < 250).any(axis=1).mean() > 0.2
        else:  # curves: the first series in matplotlib's first colour (C0, blue)
            assert (np.abs(pixels - (0x1F, 0x77, 0xB4)).max(axis=1) <= 8).sum() > 50, figure
        assert f"({figure}.png)" in markdown


def test_the_plain_model_of_an_mlp_patch_embedding_loads_for_the_attacks(tmp_path, saved_model):
    """`--plain-model` may be the plain checkpoint of a fold run with an MLP patch embedding (not a
    ViTForImageClassification); it predicts as its keyed fold does on encrypted images."""
    _, _, data = saved_model
    torch.manual_seed(0)
    plain = tiny_vit(32, 8, 48, 2, labels=2, patch_mlp=96)
    keyed = LCryptViTForImageClassification.from_plain(plain, KEY, IMAGENET_MEAN, IMAGENET_STD).eval()
    for model, folder in ((plain, tmp_path / "plain"), (keyed, tmp_path / "keyed")):
        model.save_pretrained(folder)
        LCryptImageProcessor.for_model(keyed).save_pretrained(folder)
    sample, sources = report_module.load_sample(data, KEY, tmp_path / "keyed", tmp_path / "plain", split="train")
    assert type(sample.plain.model) is LCryptViTForImageClassification and sample.plain.model.config.key_id is None
    assert sources["plain_model"] == str(tmp_path / "plain")
    keyed_logits = sample.keyed.logits(sample.keyed.inputs(sample.images))
    assert torch.allclose(sample.plain.logits(sample.plain.inputs(sample.images)), keyed_logits, atol=1e-4)


def test_attack_command_without_a_model_runs_the_cipher_attacks(tmp_path, saved_model, capsys):
    _, key_file, data = saved_model
    out = tmp_path / "cipher"
    argv = ["attack", "--data", data, "--key-file", key_file, "--out", out, "--split", "train"]
    assert main([str(a) for a in [*argv, "--image-size", "32", "--block-size", "8", "--max-images", "6"]]) == 0
    report = json.loads((out / "attack_report.json").read_text())
    assert list(report["attacks"]) == ["jigsaw", "known-plaintext", "metrics"]
    assert report["attacks"]["known-plaintext"]["structured"]["unseen_exact"] == 1.0
    assert (out / "jigsaw.png").is_file()
    assert main([str(a) for a in [*argv, "--image-size", "32", "--block-size", "8", "--attacks", "fgsm"]]) == 1
    assert "need a keyed model" in capsys.readouterr().err
