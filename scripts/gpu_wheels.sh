#!/usr/bin/env bash
# Downloads, on a machine with internet, the wheels that a GPU machine without internet lacks (or has too old) for
# scripts/gpu_check.sh, into .whl/ (git-ignored); gpu_check.sh installs them from there (docs/training.md).
#   bash scripts/gpu_wheels.sh
# Made for an image with Python 3.12, torch, transformers 5.17, huggingface-hub 1.33, accelerate, pyarrow, pandas,
# fsspec, aiohttp, xxhash, safetensors, tokenizers, scikit-learn and matplotlib, but no datasets, evaluate or gradio.
# It also prints what the checkout, the wheels and .gpu-data/ (the images gpu_check.sh falls back to) weigh together,
# and fails above 64 MiB, a transfer's limit. Settings: GPU_WHEELS_DIR (default .whl), GPU_WHEELS_PYTHON_VERSION
# (3.12), GPU_WHEELS_MAX_MIB (60, for the wheels alone), PYTHON (the python whose pip downloads; default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEST=${GPU_WHEELS_DIR:-.whl}
PYVER=${GPU_WHEELS_PYTHON_VERSION:-3.12}
MAX_MIB=${GPU_WHEELS_MAX_MIB:-60}
PINNED=(
  transformers==5.24.0   # hf-lcrypt needs >= 5.24; 5.24 still takes the image's huggingface-hub 1.x (5.25 wants 2.4)
  datasets==5.2.0        # missing
  evaluate==0.4.6        # missing
  dill==0.4.1            # missing; datasets and evaluate need it
  multiprocess==0.70.19  # missing; likewise (a wheel per Python version)
  fsspec==2026.9.0       # datasets 5.2.0 takes fsspec <= 2026.9.0; the image's may be newer
)
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64)

TAG=${PYVER/./}
fits() {  # fits WHEEL PIN: WHEEL is PIN's version, for this Python
  local name version
  name=$(basename "$1"); version=${2##*==}
  [[ $name == "${2%%==*}-$version-"* ]] && [[ ${name#*-"$version"-} =~ ^(py3|py2\.py3|(cp|py)$TAG)- ]]
}
missing=()
for pin in "${PINNED[@]}"; do
  found=0
  for wheel in "$DEST"/*.whl; do fits "$wheel" "$pin" && found=1; done
  [ "$found" = 1 ] || missing+=("$pin")
done
mkdir -p "$DEST"
if [ ${#missing[@]} -gt 0 ]; then  # a second run with everything in place needs no network
  "$PY" -m pip download -q --no-deps --only-binary=:all: --implementation cp --python-version "$PYVER" \
    "${PLATFORMS[@]/#/--platform=}" -d "$DEST" "${missing[@]}"
fi

# One version of each package: a stale wheel beside the pinned one stops the whole install.
for wheel in "$DEST"/*.whl; do
  keep=0
  for pin in "${PINNED[@]}"; do fits "$wheel" "$pin" && keep=1; done
  [ "$keep" = 1 ] || { echo "gpu_wheels: removing $(basename "$wheel") (not pinned for $PYVER)" >&2; rm -f "$wheel"; }
done

mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
total=0
for wheel in "$DEST"/*.whl; do
  size=$(stat -c %s "$wheel")
  total=$(( total + size ))
  echo "$(basename "$wheel")  $(mib "$size") MiB"
done
echo "total: $(mib "$total") MiB in $(ls "$DEST"/*.whl | wc -l) wheels for CPython $PYVER, in $DEST"
if [ "$total" -gt $(( MAX_MIB * 1048576 )) ]; then
  echo "gpu_wheels: the wheels take $(mib "$total") MiB, over the $MAX_MIB MiB limit (GPU_WHEELS_MAX_MIB):" \
    "a device call carries 64 MiB with the checkout; pin smaller versions or carry fewer." >&2
  exit 1
fi

# The whole transfer: the files git would copy, the wheels and the data folder gpu_check.sh falls back to.
bytes_of() { awk '{ s += $1 } END { print s + 0 }'; }
tree=$( (git ls-files -z --cached --others --exclude-standard 2>/dev/null | xargs -0 -r stat -c %s -- 2>/dev/null \
  || true) | bytes_of)
data=$( (find .gpu-data -type f -printf '%s\n' 2>/dev/null || true) | bytes_of)
carry=$(( tree + total + data ))
echo "to carry with the checkout ($(mib "$tree") MiB) and .gpu-data/ ($(mib "$data") MiB): $(mib "$carry") MiB of 64"
if [ "$carry" -gt $(( 64 * 1048576 )) ]; then
  echo "gpu_wheels: the checkout, the wheels and .gpu-data/ take $(mib "$carry") MiB, over a 64 MiB transfer;" \
    "carry fewer images in .gpu-data/." >&2
  exit 1
fi
