"""Dataset loading, duplicate-aware splits, subsampling, pre-encryption and self-contained parquet."""

import hashlib
import json
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value
from PIL import Image as PILImage

from hf_lcrypt import BlockCipher, LCryptKey
from hf_lcrypt.encrypted_datasets import dataset_fingerprint, encrypt_dataset, save_encrypted
from hf_lcrypt.image_datasets import MEDMNIST_CLASS_NAMES, label_maps, load_image_dataset
from hf_lcrypt.splits import content_hashes, split_by_content, subsample_per_class

KEY = LCryptKey.from_hex("0f" * 32)
CLASS_SIZES = {"benign": 40, "malignant": 25, "normal": 12}  # unique images per class, deliberately unbalanced


def write_png(path: Path, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    PILImage.fromarray(pixels).save(path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Class folders of distinct PNGs plus byte-identical copies: 4 extra copies of one benign image, 2 of another,
    and one malignant file that is a copy of a benign one (a duplicate with conflicting labels)."""
    root = tmp_path_factory.mktemp("images")
    seed = 0
    for name, count in CLASS_SIZES.items():
        (root / name).mkdir()
        for i in range(count):
            write_png(root / name / f"{i:03d}.png", seed)
            seed += 1
    for i in range(4):
        shutil.copy(root / "benign" / "000.png", root / "benign" / f"copy0_{i}.png")
    for i in range(2):
        shutil.copy(root / "benign" / "001.png", root / "benign" / f"copy1_{i}.png")
    shutil.copy(root / "benign" / "002.png", root / "malignant" / "from_benign.png")
    return root


def file_digests(split: Dataset) -> list[str]:
    """SHA-256 of each row's source file, computed here independently of the library's hashing."""
    paths = [item["path"] for item in split.cast_column("image", Image(decode=False))["image"]]
    return [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]


def test_image_folder_split_keeps_every_copy_in_one_split(folder, tmp_path):
    dataset, report = load_image_dataset(
        folder, val_fraction=0.2, test_fraction=0.2, seed=1, cache_dir=tmp_path, return_report=True
    )
    assert list(dataset) == ["train", "validation", "test"]
    assert dataset["train"].features["label"].names == sorted(CLASS_SIZES)
    digests = {split: file_digests(ds) for split, ds in dataset.items()}
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        assert not set(digests[a]) & set(digests[b]), f"a duplicate image is in both {a} and {b}"
    all_digests = [d for split in digests.values() for d in split]
    assert len(all_digests) == sum(CLASS_SIZES.values()) + 7  # nothing lost, nothing repeated
    assert (report.duplicate_groups, report.duplicate_files, report.conflicting_groups) == (3, 7, 1)
    assert report.num_images == len(all_digests)
    # Stratified: every class lands within one group (at most 5 copies) of its target in every split.
    names = dataset["train"].features["label"].names
    class_totals = Counter(names[i] for ds in dataset.values() for i in ds["label"])
    for split, fraction in (("train", 0.6), ("validation", 0.2), ("test", 0.2)):
        counts = Counter(names[i] for i in dataset[split]["label"])
        assert report.split_sizes[split] == {name: counts[name] for name in names}
        for name, total in class_totals.items():
            assert abs(counts[name] - fraction * total) <= 5, (split, name, counts[name], total)
    assert "7 byte-identical duplicate files in 3 groups" in str(report)
    json.dumps(report.to_dict())


def test_content_split_is_deterministic_for_a_seed(folder, tmp_path):
    train = load_image_dataset(folder, val_fraction=0.0, test_fraction=0.0, cache_dir=tmp_path)["train"]
    first, _ = split_by_content(train, 0.25, 0.25, seed=3)
    again, _ = split_by_content(train, 0.25, 0.25, seed=3)
    other, _ = split_by_content(train, 0.25, 0.25, seed=4)
    assert file_digests(first["validation"]) == file_digests(again["validation"])
    assert file_digests(first["validation"]) != file_digests(other["validation"])
    only_val, _ = split_by_content(train, 0.3, 0.0)
    assert list(only_val) == ["train", "validation"]
    with pytest.raises(ValueError, match="sum to less than 1"):
        split_by_content(train, 0.5, 0.5)


def test_duplicates_are_found_from_embedded_bytes_too():
    """Datasets built in memory carry image bytes and no paths."""
    images = [np.full((4, 4, 3), v, dtype=np.uint8) for v in (0, 1, 2, 1, 1, 3, 0)]
    features = Features({"image": Image(), "label": ClassLabel(names=["a", "b"])})
    dataset = Dataset.from_dict({"image": images, "label": [0, 0, 1, 0, 0, 1, 0]}, features=features)
    hashes = content_hashes(dataset)
    assert hashes[1] == hashes[3] == hashes[4] and hashes[0] == hashes[6] and len(set(hashes)) == 4
    splits, report = split_by_content(dataset, 0.3, 0.3, seed=0)
    assert (report.duplicate_groups, report.duplicate_files, report.conflicting_groups) == (2, 3, 0)
    seen = [set(content_hashes(ds)) for ds in splits.values()]
    assert sum(len(s) for s in seen) == len(set().union(*seen)) == 4


def test_subsample_per_class_is_capped_and_deterministic(folder, tmp_path):
    full = load_image_dataset(folder, cache_dir=tmp_path)
    small = load_image_dataset(folder, cache_dir=tmp_path, max_per_class=5)
    for split in full:
        counts = Counter(small[split]["label"])
        for label, n in Counter(full[split]["label"]).items():
            assert counts[label] == min(n, 5)
    assert file_digests(small["train"]) == file_digests(
        load_image_dataset(folder, cache_dir=tmp_path, max_per_class=5)["train"]
    )
    picked = subsample_per_class(full["train"], 3, seed=0)
    assert file_digests(picked) != file_digests(subsample_per_class(full["train"], 3, seed=1))
    assert set(file_digests(picked)) <= set(file_digests(full["train"]))


def write_medmnist(path: Path, label_shape: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {}
    for key, n in (("train", 12), ("val", 4), ("test", 6)):
        arrays[f"{key}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 2, n).astype(np.uint8)
        arrays[f"{key}_labels"] = labels[:, None] if label_shape == "column" else labels
    np.savez(path, **arrays)
    return arrays


@pytest.mark.parametrize("label_shape", ["flat", "column"])
def test_medmnist_labels_of_either_shape(tmp_path, label_shape):
    arrays = write_medmnist(tmp_path / "pneumoniamnist.npz", label_shape)
    dataset = load_image_dataset(tmp_path / "pneumoniamnist.npz")
    assert list(dataset) == ["train", "validation", "test"]
    assert dataset["train"].features["label"].names == list(MEDMNIST_CLASS_NAMES["pneumoniamnist"])
    for split, key in (("train", "train"), ("validation", "val"), ("test", "test")):
        assert dataset[split]["label"] == arrays[f"{key}_labels"].reshape(-1).tolist()
        assert np.array_equal(np.asarray(dataset[split][0]["image"]), arrays[f"{key}_images"][0])


def test_medmnist_names_when_unknown_or_given_and_errors(tmp_path):
    write_medmnist(tmp_path / "mystery.npz", "flat")
    assert load_image_dataset(tmp_path / "mystery.npz")["train"].features["label"].names == ["0", "1"]
    given = load_image_dataset(tmp_path / "mystery.npz", class_names=["no", "yes"])
    assert label_maps(given) == ({0: "no", 1: "yes"}, {"no": 0, "yes": 1})
    arrays = dict(np.load(tmp_path / "mystery.npz"))
    np.savez(tmp_path / "multilabel.npz", **{**arrays, "train_labels": np.zeros((12, 2), dtype=np.uint8)})
    with pytest.raises(ValueError, match="single-label"):
        load_image_dataset(tmp_path / "multilabel.npz")
    with pytest.raises(FileNotFoundError):
        load_image_dataset(tmp_path / "absent.npz")
    with pytest.raises(FileNotFoundError):
        load_image_dataset(tmp_path / "absent_folder")


def test_embedded_default_is_breastmnist_with_its_official_splits():
    dataset = load_image_dataset("default")
    assert {split: len(ds) for split, ds in dataset.items()} == {"train": 546, "validation": 78, "test": 156}
    id2label, label2id = label_maps(dataset)
    assert id2label == {0: "malignant", 1: "normal_or_benign"} and label2id["malignant"] == 0
    assert Counter(dataset["test"]["label"]) == {0: 42, 1: 114}
    image = dataset["train"][0]["image"]
    assert isinstance(image, PILImage.Image) and image.size == (28, 28)
    assert load_image_dataset("breastmnist")["validation"]["label"] == dataset["validation"]["label"]


def hub_style_dataset() -> DatasetDict:
    """Columns named `img`/`labels`, string labels, and a `valid` split, as some Hub datasets have them."""
    features = Features({"img": Image(), "labels": Value("string"), "note": Value("string")})

    def rows(n, offset):
        images = [np.full((6, 6, 3), offset + i, dtype=np.uint8) for i in range(n)]
        return {"img": images, "labels": ["tumour", "healthy"] * (n // 2), "note": ["x"] * n}

    return DatasetDict(
        {"train": Dataset.from_dict(rows(20, 0), features=features), "valid": Dataset.from_dict(rows(6, 100), features)}
    )


def check_hub_style(dataset: DatasetDict) -> None:
    assert list(dataset) == ["train", "validation", "test"]
    assert dataset["train"].column_names == ["image", "label"]
    assert dataset["train"].features["label"] == ClassLabel(names=["healthy", "tumour"])
    assert len(dataset["validation"]) == 6 and len(dataset["train"]) + len(dataset["test"]) == 20
    assert dataset["validation"][0]["label"] == 1 and isinstance(dataset["test"][0]["image"], PILImage.Image)


def test_hub_code_path_with_a_local_parquet_repository(tmp_path):
    """`load_dataset(id)` is the Hub path; a folder laid out like a Hub dataset repository goes through it too."""
    for split, ds in hub_style_dataset().items():
        (tmp_path / "repo" / "data").mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(tmp_path / "repo" / "data" / f"{split}-00000-of-00001.parquet"))
    check_hub_style(load_image_dataset(tmp_path / "repo", test_fraction=0.25, cache_dir=tmp_path / "cache"))


def test_dataset_saved_to_disk(tmp_path):
    hub_style_dataset().save_to_disk(str(tmp_path / "saved"))
    check_hub_style(load_image_dataset(tmp_path / "saved", test_fraction=0.25))


def test_ambiguous_columns_must_be_named(tmp_path):
    features = Features({"scan": Image(), "mask": Image(), "grade": ClassLabel(names=["low", "high"])})
    scans = [np.full((4, 4), v, dtype=np.uint8) for v in range(10)]
    masks = [np.zeros((4, 4), dtype=np.uint8)] * 10
    data = {"scan": scans, "mask": masks, "grade": [0, 1] * 5}
    Dataset.from_dict(data, features=features).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(ValueError, match="pass image_column"):
        load_image_dataset(tmp_path / "saved")
    dataset = load_image_dataset(tmp_path / "saved", image_column="scan", val_fraction=0.2, test_fraction=0.2)
    assert dataset["train"].features["label"].names == ["low", "high"]
    assert sorted(np.asarray(im).max() for ds in dataset.values() for im in ds["image"]) == list(range(10))


def test_encrypt_then_parquet_survives_a_move(tmp_path):
    dataset = load_image_dataset("default", max_per_class=4)
    cipher = BlockCipher(KEY, 32, 8)
    encrypted = encrypt_dataset(dataset, cipher, image_size=32)
    plain = np.stack(
        [
            np.asarray(im.convert("RGB").resize((32, 32), PILImage.Resampling.BILINEAR))
            for im in dataset["test"]["image"]
        ]
    )
    stored = np.stack([np.asarray(im) for im in encrypted["test"]["image"]])
    assert stored.shape == (8, 32, 32, 3) and not np.array_equal(stored, plain)
    assert np.array_equal(cipher.decrypt(stored), plain)
    assert encrypted["test"]["label"] == dataset["test"]["label"]

    save_encrypted(encrypted, tmp_path / "first", cipher=cipher)
    info = json.loads((tmp_path / "first" / "lcrypt.json").read_text())
    assert info["key_id"] == KEY.key_id and KEY.to_hex() not in (tmp_path / "first" / "lcrypt.json").read_text()
    with pytest.raises(FileExistsError):
        save_encrypted(encrypted, tmp_path / "first")
    shutil.move(tmp_path / "first", tmp_path / "moved")
    reloaded = load_image_dataset(tmp_path / "moved", cache_dir=tmp_path / "cache")
    assert reloaded["train"].features["label"].names == ["malignant", "normal_or_benign"]
    for split in ("train", "validation", "test"):
        assert reloaded[split]["label"] == encrypted[split]["label"]
        for got, want in zip(reloaded[split]["image"], encrypted[split]["image"], strict=True):
            assert np.array_equal(np.asarray(got), np.asarray(want))


def test_encrypt_with_worker_processes_matches_one_process():
    dataset = load_image_dataset("default", max_per_class=6)["train"]
    cipher = BlockCipher(KEY, 16, 8)
    one = encrypt_dataset(dataset, cipher)
    two = encrypt_dataset(dataset, cipher, num_proc=2)
    assert [np.asarray(im).tobytes() for im in one["image"]] == [np.asarray(im).tobytes() for im in two["image"]]
    with pytest.raises(ValueError, match="differs"):
        encrypt_dataset(dataset, cipher, image_size=32)


def test_dataset_fingerprint_follows_content_and_transforms():
    """The one read of datasets' private fingerprint: fails when a datasets release renames it or stops tracking."""
    dataset = Dataset.from_dict({"x": [1, 2, 3]})
    same = Dataset.from_dict({"x": [1, 2, 3]})
    other = Dataset.from_dict({"x": [1, 2, 4]})
    fingerprint = dataset_fingerprint(dataset)
    assert isinstance(fingerprint, str) and fingerprint == dataset_fingerprint(same)
    assert fingerprint != dataset_fingerprint(other)
    assert fingerprint != dataset_fingerprint(dataset.select([0, 1]))
    assert fingerprint != dataset_fingerprint(dataset.map(lambda row: {"x": row["x"] + 1}))


def test_saved_parquet_embeds_image_files(folder, tmp_path):
    """An image-folder dataset refers to files by path; the parquet must hold their bytes instead."""
    source = shutil.copytree(folder, tmp_path / "images")
    dataset = load_image_dataset(source, max_per_class=2, cache_dir=tmp_path / "cache")
    expected = {split: [np.asarray(im) for im in ds["image"]] for split, ds in dataset.items()}
    save_encrypted(dataset, tmp_path / "out", max_shard_size=500)  # tiny shards: several files per split
    assert len(list((tmp_path / "out" / "data").glob("train-*.parquet"))) > 1
    shutil.rmtree(source)
    reloaded = load_image_dataset(tmp_path / "out", cache_dir=tmp_path / "cache2")
    for split, images in expected.items():
        assert all(np.array_equal(np.asarray(a), b) for a, b in zip(reloaded[split]["image"], images, strict=True))


def test_real_brain_mri_duplicates_stay_in_one_split(shared_data, tmp_path):
    folder = shared_data / "brain-tumor-mri" / "train"
    if not folder.is_dir():
        pytest.skip("brain-tumor-mri is not in the shared data")
    start = time.perf_counter()
    dataset, report = load_image_dataset(folder, cache_dir=tmp_path, return_report=True)
    elapsed = time.perf_counter() - start
    assert report.duplicate_files > 100 and report.duplicate_groups > 100
    digests = {split: set(file_digests(ds)) for split, ds in dataset.items()}
    assert not (digests["train"] & digests["validation"] or digests["train"] & digests["test"])
    assert not digests["validation"] & digests["test"]
    assert report.seconds < 30, f"hashing {report.num_images} files took {report.seconds:.1f} s"
    print(f"brain MRI: {report} (load + split {elapsed:.1f} s)")
