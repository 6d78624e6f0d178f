"""experiments/reproduce_results.sh: every run behind the results, as valid training commands."""

import itertools
import subprocess
from dataclasses import replace
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "experiments" / "reproduce_results.sh"


def test_reproduce_results_runs_valid_training_commands(tmp_path: Path):
    """Every command of experiments/reproduce_results.sh parses as a training config, with the settings the results
    table reports (run with a stand-in interpreter that records its arguments instead of training)."""
    from hf_lcrypt.training import parse_config

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
        config = parse_config(argv)
        configs[Path(config.output_dir).relative_to(tmp_path / "out").as_posix()] = config
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
    assert (recipe.mode, recipe.model, recipe.epochs, recipe.distillation, recipe.tta) == (
        "encrypted", "micro", 150, "soft", True,
    )  # fmt: skip
    assert configs["brain-tumor-mri/vit-fold"].mode == "fold"
    wide = configs["extra/vit128-encrypted"]  # the recipe at LC25000's geometry, taught by the same 64x64 CNN
    assert (wide.mode, wide.image_size, wide.block_size, wide.epochs, wide.teacher) == (
        "encrypted", 128, 16, 120, recipe.teacher,
    )  # fmt: skip
    for mode in ("encrypted", "fold"):  # the recipe but for its schedule
        longer = configs[f"extra/vit-240ep-{mode}"]
        assert replace(configs[f"brain-tumor-mri/vit-{mode}"], epochs=240, output_dir=longer.output_dir) == longer
    averaged = configs["extra/vit-ema-encrypted"]  # the recipe with a weight average
    assert replace(recipe, ema_decay=0.999, output_dir=averaged.output_dir) == averaged
    lc = configs["lc25000/vit128-encrypted"]
    assert (lc.image_size, lc.block_size, lc.teacher) == (
        128,
        16,
        str(tmp_path / "out/lc25000/teacher-resnet-small-orient/model"),
    )
    long = configs["lc25000/vit128-200ep-fold"]
    assert (long.mode, long.epochs, long.image_size, long.teacher) == ("fold", 200, 128, lc.teacher)
    assert configs["lc25000/teacher-resnet-small-orient"].image_size == 64
    assert configs["lc25000/teacher-resnet-small-orient-128"].image_size == 128
    lc128 = configs["lc25000/vit128-teacher128-fold"]
    assert (lc128.mode, lc128.epochs, Path(lc128.teacher).parent.name) == (
        "fold",
        80,
        "teacher-resnet-small-orient-128",
    )
    assert (configs["geometry/vit-200-25"].image_size, configs["geometry/vit-200-25"].block_size) == (200, 25)
    assert configs["ablation/base"].attack_max_images == 64  # a stage's own flags override the common ones
    for name, config in configs.items():  # histology has no up or down; MRI has
        assert config.augment_orientation == name.startswith("lc25000"), name
    seeds = [configs[f"brain-tumor-mri-seeds/seed-{seed}/vit-encrypted"] for seed in range(1, 29)]
    assert [c.seed for c in seeds] == list(range(1, 29)) and {c.split_seed for c in seeds} == {0}
    assert all(c.teacher == recipe.teacher for c in seeds)
    # The seed table pairs these with the seed-0 run: one recipe but the seed.
    for mode, seed in itertools.product(("encrypted", "fold"), (1, 2, 3)):
        seed_0, other = configs[f"lc25000/vit128-200ep-{mode}"], configs[f"lc25000-seeds/seed-{seed}/vit-{mode}"]
        assert (seed_0.seed, other.seed) == (0, seed)
        assert replace(seed_0, seed=seed, output_dir=other.output_dir) == other
    for seed in range(4, 10):  # the MLP patch embedding ablation: the seed table's encrypted runs but for it
        linear, mlp = (configs[f"brain-tumor-mri{arm}/seed-{seed}/vit-encrypted"] for arm in ("-seeds", "-mlp"))
        assert mlp.patch_embedding == "mlp" and linear.patch_embedding == "linear"
        assert replace(linear, patch_embedding="mlp", output_dir=mlp.output_dir) == mlp
    for seed, mode in itertools.product((16, 17), ("encrypted", "fold")):  # the seed table's pairs, with an EMA
        seeded, ema = (
            configs[f"brain-tumor-mri-seeds/seed-1/vit-{mode}"],
            configs[f"brain-tumor-mri-ema/seed-{seed}/vit-{mode}"],
        )
        assert replace(seeded, seed=seed, ema_decay=0.999, output_dir=ema.output_dir) == ema
    tiny = configs["extra/tiny-encrypted"]
    assert (tiny.model, tiny.epochs, tiny.attack_max_images, tiny.teacher is not None) == ("tiny", 25, 128, True)

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
        commands = [parse_config(argv) for script, *argv in lines if script == "scripts/train.py"]
        outputs = {Path(c.output_dir).relative_to(tmp_path / "out").as_posix() for c in commands}
        expected = {f"brain-tumor-mri-seeds/seed-{s}/vit-{mode}" for s in (18, 19) for mode in ("encrypted", "fold")}
        assert (outputs, len(commands)) == ((expected, 4) if stages == "seeds" else (set(), 0))
