"""The weight average: its update rule, and that it commutes with folding the key in (so it keeps the key exact)."""

import pytest
import torch
from helpers import tiny_vit
from transformers import TrainerControl, TrainerState, TrainingArguments

from hf_lcrypt import LCryptKey, LCryptViTForImageClassification
from hf_lcrypt.training.weight_averaging import WeightAverage, averaged_entries

HALF = [0.5, 0.5, 0.5]


def feed(averager: WeightAverage, models: list[torch.nn.Module], tmp_path) -> None:
    """Begin training with models[0], then one optimiser step per later model (as the Trainer calls the callback)."""
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    averager.on_train_begin(args, TrainerState(), TrainerControl(), model=models[0])
    for step, model in enumerate(models[1:], start=1):
        averager.on_step_end(args, TrainerState(global_step=step), TrainerControl(), model=model)


def perturbed(model: torch.nn.Module, steps: int, seed: int = 0) -> list[torch.nn.Module]:
    """`model` and `steps` copies, each the previous one with Gaussian noise added to every weight."""
    generator = torch.Generator().manual_seed(seed)
    models = [model]
    for _ in range(steps):
        model = type(model)(model.config)
        model.load_state_dict(
            {n: v + torch.randn(v.shape, generator=generator) for n, v in models[-1].state_dict().items()}
        )
        models.append(model)
    return models


def test_the_average_follows_the_update_rule_with_its_decay_warm_up(tmp_path):
    models = perturbed(tiny_vit(), steps=40)
    averager = WeightAverage(decay=0.9)
    feed(averager, models, tmp_path)
    expected = {n: v.clone() for n, v in models[0].state_dict().items()}
    for step, model in enumerate(models[1:], start=1):
        decay = min(0.9, (1 + step) / (10 + step))  # 0.18 at step 1: the initialisation fades fast
        expected = {n: decay * v + (1 - decay) * model.state_dict()[n] for n, v in expected.items()}
    assert averager.average.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(averager.average[name], value, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(averager.average["classifier.weight"], models[-1].state_dict()["classifier.weight"])


def test_averaging_keyed_weights_is_folding_the_averaged_plain_weights(tmp_path):
    """Along one trajectory of plain weights and its folded copy: average of the folded = fold of the average, bit for
    bit (with mean = std = 0.5 the fold is a signed permutation of each weight tensor, and lerp is element-wise)."""
    key = LCryptKey.generate()
    plain_models = perturbed(tiny_vit(), steps=12, seed=1)
    keyed_models = [LCryptViTForImageClassification.from_plain(m, key, HALF, HALF) for m in plain_models]
    plain_average, keyed_average = WeightAverage(decay=0.8), WeightAverage(decay=0.8)
    feed(plain_average, plain_models, tmp_path)
    feed(keyed_average, keyed_models, tmp_path)

    plain = tiny_vit()
    plain.load_state_dict(plain_average.average)
    folded = averaged_entries(LCryptViTForImageClassification.from_plain(plain, key, HALF, HALF))
    assert folded.keys() == keyed_average.average.keys()
    for name, value in folded.items():
        assert torch.equal(keyed_average.average[name], value), name


def test_resuming_needs_the_saved_average_and_the_decay_a_valid_value(tmp_path):
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        WeightAverage(decay=1.0)
    with pytest.raises(ValueError, match="was not trained with a weight average"):
        feed(WeightAverage(0.99, resume_from=str(tmp_path)), [tiny_vit()], tmp_path)
