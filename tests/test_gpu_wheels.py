"""scripts/gpu_wheels.sh and the wheel install of scripts/gpu_check.sh, for a GPU machine without internet.

The GPU image (Python 3.12, torch, transformers 5.17, huggingface-hub 1.33, accelerate 1.15, no datasets, evaluate or
gradio) is copied here as a Python with only the image's packages: this environment's own builds of them, linked,
with the image's transformers, huggingface-hub and accelerate versions installed over them. It uses this Python
(3.11), not 3.12, with the same pinned wheels downloaded for 3.11 (only multiprocess's wheel differs by version); CPU
torch for 3.12 is not available here without a large download. The environment and the wheels are built once and
cached under ~/.cache/hf-lcrypt (HF_LCRYPT_TEST_CACHE); the first build needs PyPI, and the tests skip without it.
"""

import hashlib
import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO_ROOT
from PIL import Image

pytestmark = pytest.mark.slow

CACHE = Path(os.environ.get("HF_LCRYPT_TEST_CACHE", Path.home() / ".cache" / "hf-lcrypt"))
PYVER = f"{sys.version_info.major}.{sys.version_info.minor}"
# The device image's Python packages (as documented for the GPU machine), and the versions it pins of those
# that matter here; the others come from this environment.
IMAGE_LIST = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax
fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2
joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch
mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti
nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver
nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13
nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache
protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest
pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex
requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece
sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio
torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions
typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
"""
IMAGE_PACKAGES = frozenset(IMAGE_LIST.split())
IMAGE_VERSIONS = {"transformers": "5.17.0", "huggingface-hub": "1.33.0", "accelerate": "1.15.0"}


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheels(python_version: str, **env: str) -> subprocess.CompletedProcess:
    folder = CACHE / f"gpu-wheels-py{python_version}"
    settings = {"GPU_WHEELS_DIR": str(folder), "GPU_WHEELS_PYTHON_VERSION": python_version, "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "gpu_wheels.sh")],
        env={**os.environ, **settings, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


def downloaded(python_version: str) -> subprocess.CompletedProcess:
    """scripts/gpu_wheels.sh's run for `python_version` (offline once the wheels are cached), or a skip."""
    done = wheels(python_version)
    if done.returncode != 0:
        pytest.skip(f"scripts/gpu_wheels.sh could not download the wheels (PyPI unreachable?): {done.stderr[-300:]}")
    return done


def image_python() -> Path:
    """A Python with the GPU image's packages only (built once for this environment's versions, then cached)."""
    linked = [d for d in md.distributions() if normalized(d.metadata["Name"]) in IMAGE_PACKAGES - set(IMAGE_VERSIONS)]
    recipe = sorted(f"{d.metadata['Name']}=={d.version}" for d in linked) + [sys.prefix, str(IMAGE_VERSIONS)]
    root = CACHE / f"gpu-image-py{PYVER}-{hashlib.sha256(str(recipe).encode()).hexdigest()[:12]}"
    python = root / "bin" / "python"
    if (root / "ready").exists():
        return python
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", "--clear", str(root)], check=True)
    site = root / "lib" / f"python{PYVER}" / "site-packages"
    for dist in linked:
        for top in {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            if not (site / top).exists() and not top.endswith(".pth"):
                (site / top).symlink_to(Path(dist.locate_file(top)).resolve())
    pinned = [f"{name}=={version}" for name, version in IMAGE_VERSIONS.items()]
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--only-binary=:all:", "--target", str(site)]
        + pinned,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"could not download the image's {', '.join(pinned)} (PyPI unreachable?): {done.stderr[-300:]}")
    (root / "ready").touch()
    return python


def test_the_wheels_are_pinned_and_their_size_is_checked():
    done = downloaded("3.12")
    names = sorted(p.name for p in (CACHE / "gpu-wheels-py3.12").glob("*.whl"))
    pinned = ["datasets", "dill", "evaluate", "fsspec", "multiprocess", "transformers"]
    assert [n.split("-")[0] for n in names] == pinned
    assert "transformers-5.24.0-py3-none-any.whl" in names and "multiprocess-0.70.19-py312-none-any.whl" in names
    total = float(re.search(r"total: ([\d.]+) MiB in 6 wheels for CPython 3.12", done.stdout).group(1))
    assert 5 < total < 60
    carry = re.search(r"checkout \(([\d.]+) MiB\) and \.gpu-data/ \(([\d.]+) MiB\): ([\d.]+) MiB of 64", done.stdout)
    assert carry and float(carry[3]) == pytest.approx(float(carry[1]) + float(carry[2]) + total, abs=0.16)
    too_big = wheels("3.12", GPU_WHEELS_MAX_MIB=str(int(total) - 1))
    assert too_big.returncode == 1 and f"over the {int(total) - 1} MiB limit" in too_big.stderr


def test_the_wheels_install_beside_the_image_packages_and_the_tiny_check_runs(tmp_path):
    python = image_python()
    bare = subprocess.run(
        [python, "-c", "import transformers; print(transformers.__version__); import datasets"],
        capture_output=True,
        text=True,
    )  # the copy of the image is faithful: old transformers, no datasets
    assert bare.stdout.strip() == "5.17.0" and "No module named 'datasets'" in bare.stderr
    downloaded(PYVER)
    rng = np.random.default_rng(0)
    for label in ("glioma", "meningioma", "notumor", "pituitary"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(10):
            image = Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8))
            image.save(tmp_path / "data" / label / f"{label}-{i}.jpg")
    env = {
        **os.environ,
        "PYTHON": str(python),
        "PYTHONPATH": "",
        "GPU_CHECK_TINY": "1",
        "GPU_CHECK_WHEELS": str(CACHE / f"gpu-wheels-py{PYVER}"),
        "GPU_CHECK_DATA": str(tmp_path / "data"),
        "GPU_CHECK_OUT": str(tmp_path / "gpu-check"),
        "OUT": str(tmp_path / "fetched"),
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "gpu_check.sh")], env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "transformers 5.24.0 (carried wheel)" in done.stderr and "datasets 5.2.0 (carried wheel)" in done.stderr
    assert "huggingface-hub 1.33.0\n" in done.stderr and f"python {PYVER}." in done.stderr
    summary = json.loads(done.stdout)
    versions = summary["versions"]
    assert versions["transformers"] == "5.24.0"  # the carried wheel, not the image's 5.17.0
    assert (versions["huggingface-hub"], versions["accelerate"]) == ("1.33.0", "1.15.0")  # the image's
    assert versions["datasets"] == "5.2.0" and versions["evaluate"] == "0.4.6"
    assert summary["student"]["epochs"] == pytest.approx(1) and summary["student"]["distilled_from"] == "teacher"
    assert set(summary["step_seconds"]) == {"bench_training", "bench_inference", "teacher", "student"}
    fetched = sorted(p.name for p in (tmp_path / "fetched").iterdir())
    logs = ("bench_inference", "bench_training", "pip_install", "student", "teacher", "versions")
    assert fetched == sorted(["gpu-check.json"] + [f"{name}.log" for name in logs])
    assert json.loads((tmp_path / "fetched" / "gpu-check.json").read_text()) == summary
