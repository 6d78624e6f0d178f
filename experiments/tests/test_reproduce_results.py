"""experiments/reproduce_results.sh: every run behind the results, as valid training commands."""

import itertools
import subprocess
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "experiments" / "reproduce_results.sh"


def flat(args) -> dict[str, Any]:
    """Every setting of a run by flag name, as its metrics.json records them (`config`, then `training_args`)."""
    return {**args.settings(), **args.training.to_dict()}


def differences(args, other, **changes: Any) -> dict[str, tuple[Any, Any]]:
    """Where `other` is not the run `args` with `changes` (and its own output folder): setting -> (expected, found)."""
    expected, found = {**flat(args), **changes, "output_dir": other.training.output_dir}, flat(other)
    return {k: (expected.get(k), found.get(k)) for k in expected | found if expected.get(k) != found.get(k)}


def test_reproduce_results_runs_valid_training_commands(tmp_path: Path):
    """Every command of experiments/reproduce_results.sh parses with the training parser, with the settings the
    results table reports (run with a stand-in interpreter that records its arguments instead of training)."""
    from hf_lcrypt.training import parse_args

    record = tmp_path / "commands.txt"
    fake_python = tmp_path / "python"
    fake_python.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {record}\n')
    fake_python.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "PY": str(fake_python), "OUT": str(tmp_path / "out"), "DATA_ROOT": "data"}
    subprocess.run(["bash", str(SCRIPT)], env=env, check=True, timeout=60)

    configs = {}
    for line in record.read_text().splitlines():
        script, *argv = line.split()
        assert script == "scripts/train.py"
        config = parse_args(argv)
        configs[Path(config.training.output_dir).relative_to(tmp_path / "out").as_posix()] = config
    assert set(configs) == {
        "brain-tumor-mri/teacher-resnet-small", "brain-tumor-mri/vit-encrypted", "brain-tumor-mri/vit-fold",
        "lc25000/teacher-resnet-small-orient", "lc25000/vit128-encrypted", "lc25000/vit128-fold",
        "lc25000/vit128-200ep-encrypted", "lc25000/vit128-200ep-fold",
        "lc25000/teacher-resnet-small-orient-128",
        "lc25000/vit128-teacher128-encrypted", "lc25000/vit128-teacher128-fold",
        "pneumoniamnist/vit-encrypted", "pneumoniamnist/vit-fold",
        "geometry/vit-64-8", "geometry/vit-200-25", "geometry/vit-224-16",
        "ablation/base", "ablation/ls01", "ablation/distill-hard", "ablation/distill-soft", "ablation/mixup02",
        "extra/tiny-encrypted", "extra/vit128-encrypted", "extra/vit-240ep-encrypted", "extra/vit-240ep-fold",
        "extra/vit-ema-encrypted",
        *(f"brain-tumor-mri-seeds/seed-{seed}/vit-{mode}" for seed in range(1, 29) for mode in ("encrypted", "fold")),
        *(f"lc25000-seeds/seed-{seed}/vit-{mode}" for seed in (1, 2, 3) for mode in ("encrypted", "fold")),
        *(f"brain-tumor-mri-mlp/seed-{seed}/vit-encrypted" for seed in range(4, 10)),
        *(f"brain-tumor-mri-ema/seed-{seed}/vit-{mode}" for seed in (16, 17) for mode in ("encrypted", "fold")),
    }  # fmt: skip
    recipe = configs["brain-tumor-mri/vit-encrypted"]
    assert (
        recipe.cipher.mode, recipe.model.model, recipe.training.num_train_epochs, recipe.distillation.distillation,
        recipe.distillation.distill_temperature, recipe.data.tta,
    ) == ("encrypted", "micro", 150, "soft", 2, True)  # fmt: skip
    # The common flags: the Trainer's settings, which metrics.json records under training_args.
    common = recipe.training
    assert (common.per_device_train_batch_size, common.learning_rate, common.seed, common.logging_steps) == (
        32, 1e-3, 0, 50,
    )  # fmt: skip
    assert configs["brain-tumor-mri/vit-fold"].cipher.mode == "fold"
    assert not differences(recipe, configs["brain-tumor-mri/vit-fold"], mode="fold")
    wide = configs["extra/vit128-encrypted"]  # the recipe at LC25000's geometry, taught by the same 64x64 CNN
    assert (
        wide.cipher.mode, wide.data.image_size, wide.cipher.block_size, wide.training.num_train_epochs,
        wide.distillation.teacher,
    ) == ("encrypted", 128, 16, 120, recipe.distillation.teacher)  # fmt: skip
    for mode in ("encrypted", "fold"):  # the recipe but for its schedule
        recipe_mode, longer = configs[f"brain-tumor-mri/vit-{mode}"], configs[f"extra/vit-240ep-{mode}"]
        assert not differences(recipe_mode, longer, num_train_epochs=240)
    # the recipe with a weight average
    assert not differences(recipe, configs["extra/vit-ema-encrypted"], ema_decay=0.999)
    lc = configs["lc25000/vit128-encrypted"]
    assert (lc.data.image_size, lc.cipher.block_size, lc.distillation.teacher) == (
        128,
        16,
        str(tmp_path / "out/lc25000/teacher-resnet-small-orient/model"),
    )
    long = configs["lc25000/vit128-200ep-fold"]
    assert (long.cipher.mode, long.training.num_train_epochs, long.data.image_size, long.distillation.teacher) == (
        "fold", 200, 128, lc.distillation.teacher,
    )  # fmt: skip
    assert configs["lc25000/teacher-resnet-small-orient"].data.image_size == 64
    assert configs["lc25000/teacher-resnet-small-orient-128"].data.image_size == 128
    lc128 = configs["lc25000/vit128-teacher128-fold"]
    assert (lc128.cipher.mode, lc128.training.num_train_epochs, Path(lc128.distillation.teacher).parent.name) == (
        "fold",
        80,
        "teacher-resnet-small-orient-128",
    )
    geometry = configs["geometry/vit-200-25"]
    assert (geometry.data.image_size, geometry.cipher.block_size) == (200, 25)
    assert configs["ablation/base"].attack.attack_max_images == 64  # a stage's own flags override the common ones
    assert not differences(configs["ablation/base"], configs["ablation/ls01"], label_smoothing_factor=0.1)
    for name, config in configs.items():  # histology has no up or down; MRI has
        assert config.data.augment_orientation == name.startswith("lc25000"), name
    seeds = [configs[f"brain-tumor-mri-seeds/seed-{seed}/vit-encrypted"] for seed in range(1, 29)]
    assert [c.training.seed for c in seeds] == list(range(1, 29)) and {c.data.split_seed for c in seeds} == {0}
    assert all(c.distillation.teacher == recipe.distillation.teacher for c in seeds)
    # The seed table pairs these with the seed-0 run: one recipe but the seed.
    for mode, seed in itertools.product(("encrypted", "fold"), (1, 2, 3)):
        seed_0, other = configs[f"lc25000/vit128-200ep-{mode}"], configs[f"lc25000-seeds/seed-{seed}/vit-{mode}"]
        assert (seed_0.training.seed, other.training.seed) == (0, seed)
        assert not differences(seed_0, other, seed=seed)
    for seed in range(4, 10):  # the MLP patch embedding ablation: the seed table's encrypted runs but for it
        linear, mlp = (configs[f"brain-tumor-mri{arm}/seed-{seed}/vit-encrypted"] for arm in ("-seeds", "-mlp"))
        assert mlp.model.patch_embedding == "mlp" and linear.model.patch_embedding == "linear"
        assert not differences(linear, mlp, patch_embedding="mlp")
    for seed, mode in itertools.product((16, 17), ("encrypted", "fold")):  # the seed table's pairs, with an EMA
        seeded, ema = (
            configs[f"brain-tumor-mri-seeds/seed-1/vit-{mode}"],
            configs[f"brain-tumor-mri-ema/seed-{seed}/vit-{mode}"],
        )
        assert not differences(seeded, ema, seed=seed, ema_decay=0.999)
    tiny = configs["extra/tiny-encrypted"]
    assert (
        tiny.model.model, tiny.training.num_train_epochs, tiny.attack.attack_max_images,
        tiny.distillation.teacher is not None,
    ) == ("tiny", 25, 128, True)  # fmt: skip

    # One stage, some seeds, and an empty seed list runs none; the tables of the runs in OUT print, their figures
    # are written only with the figures stage, so that a partial rerun leaves the committed ones alone.
    runs = tmp_path / "out" / "brain-tumor-mri"
    runs.mkdir(parents=True)
    for stages, figures in (("seeds", []), ("figures", ["--figures", "experiments/figures"])):
        record.unlink(missing_ok=True)
        run_env = {**env, "STAGES": stages, "SEEDS": "18 19", "LC_SEEDS": ""}
        subprocess.run(["bash", str(SCRIPT)], env=run_env, check=True, timeout=60)
        lines = [line.split() for line in record.read_text().splitlines()]
        assert [line for line in lines if line[0] != "scripts/train.py"] == [
            ["experiments/results_table.py", str(runs), *figures]
        ]
        commands = [parse_args(argv) for script, *argv in lines if script == "scripts/train.py"]
        outputs = {Path(c.training.output_dir).relative_to(tmp_path / "out").as_posix() for c in commands}
        expected = {f"brain-tumor-mri-seeds/seed-{s}/vit-{mode}" for s in (18, 19) for mode in ("encrypted", "fold")}
        assert (outputs, len(commands)) == ((expected, 4) if stages == "seeds" else (set(), 0))


def test_compare_baselines_runs_valid_training_commands(tmp_path: Path):
    """Every command of experiments/compare_baselines.sh parses with the training parser: the ViT and CNN runs of
    each dataset share one budget and differ only in model and mode."""
    from hf_lcrypt.training import parse_args

    record = tmp_path / "commands.txt"
    fake_python = tmp_path / "python"
    fake_python.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {record}\n')
    fake_python.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "PY": str(fake_python), "OUT": str(tmp_path / "out"), "DATA_ROOT": "data"}
    subprocess.run(["bash", str(REPO_ROOT / "experiments" / "compare_baselines.sh")], env=env, check=True, timeout=60)
    runs = {}
    for line in record.read_text().splitlines():
        script, *argv = line.split()
        assert script == "scripts/train.py"
        args = parse_args(argv)
        runs[Path(args.training.output_dir).relative_to(tmp_path / "out").as_posix()] = args
    cnns = [f"{cnn}-{mode}" for cnn in ("resnet-small", "convnext-small") for mode in ("plain", "encrypted")]
    names = ("brain-tumor-mri-train", "lc25000")
    assert set(runs) == {
        *(f"{name}/{run}" for name in names for run in ("vit-encrypted", "vit-fold", *cnns)),
        "brain-tumor-mri-train/resnet-small-encrypted-200-25",
    }
    vit = runs["lc25000/vit-encrypted"]
    assert (vit.training.num_train_epochs, vit.training.learning_rate, vit.data.max_per_class) == (8, 1e-3, 500)
    for name in names:
        baseline = runs[f"{name}/vit-encrypted"]
        for run in ("vit-fold", *cnns):
            other = runs[f"{name}/{run}"]
            changes = {"mode": other.cipher.mode, "model": other.model.model, "cipher_steps": other.cipher.cipher_steps}
            if run in cnns:  # a CNN has no embeddings to decay apart
                changes["embedding_weight_decay"] = None
            assert not differences(baseline, other, **changes), run
    geometry = runs["brain-tumor-mri-train/resnet-small-encrypted-200-25"]
    assert (geometry.data.image_size, geometry.cipher.block_size, geometry.data.max_per_class) == (200, 25, 100)
