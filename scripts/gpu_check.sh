#!/usr/bin/env bash
# One command for a machine with one NVIDIA GPU (made for an H100), with or without internet (docs/training.md):
#   bash scripts/gpu_check.sh > gpu-check.json        # about 5 minutes on an H100 (estimate), under 8 by design
#   GPU_CHECK_QUICK=1 bash scripts/gpu_check.sh       # step 1 alone, about 1.5 minutes
# 1. scripts/bench_training.py and scripts/bench_inference.py at 224/16 with bf16 (a `small` ViT, ViT-S/16):
#    encrypted / plain ratios (targets >= 0.98 and <= 1.01);
# 2. a CNN teacher (resnet-small, plain images) and then a `small` ViT from scratch on encrypted brain MRI at 224/16,
#    bf16, distilled from that teacher, through scripts/train.py: test accuracy and training images/s.
# Without internet: wheels that scripts/gpu_wheels.sh downloaded into .whl/ (GPU_CHECK_WHEELS) are installed into a
# temporary folder put on PYTHONPATH (GPU_CHECK_WHEELS= , empty, skips that). The versions it runs with go to stderr
# and into the summary.
# It prints one JSON summary on stdout (format: docs/training.md); each step's log is in $GPU_CHECK_OUT/logs, and when
# OUT is set (a folder whose files are fetched back), the summary and the logs are copied there, also after a failure.
# GPU_CHECK_TINY=1 runs the same steps at tiny sizes on a CPU in about a minute (tests/test_gpu_check.py does).
# Settings: GPU_CHECK_DATA (default ../shared/data/brain-tumor-mri/train, else .gpu-data/brain-tumor-mri/train),
# GPU_CHECK_OUT (outputs/gpu-check), GPU_CHECK_COMPILE=1 (train the student with --torch_compile), PYTHON (python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TINY=${GPU_CHECK_TINY:-0}
QUICK=${GPU_CHECK_QUICK:-0}
RUN=${GPU_CHECK_OUT:-outputs/gpu-check}
WHEELS=${GPU_CHECK_WHEELS-.whl}
DATA=${GPU_CHECK_DATA:-}
COPY_TO=${OUT:-}
if [ -z "$DATA" ]; then
  DATA=../shared/data/brain-tumor-mri/train
  [ -e "$DATA" ] || DATA=.gpu-data/brain-tumor-mri/train
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_EVALUATE_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE} PYTHONUNBUFFERED=1
if [ "$QUICK" != 1 ] && [ ! -e "$DATA" ]; then
  echo "gpu_check: no data at $DATA; set GPU_CHECK_DATA to the brain MRI training folder." >&2
  exit 1
fi
rm -rf "$RUN" && mkdir -p "$RUN/logs"
start=$(date +%s)
SITE=""
finish() {
  [ -n "$SITE" ] && rm -rf "$SITE"
  if [ -n "$COPY_TO" ]; then
    mkdir -p "$COPY_TO" && cp "$RUN"/logs/*.log "$COPY_TO"/ 2>/dev/null || true
    [ -e "$RUN/gpu-check.json" ] && cp "$RUN/gpu-check.json" "$COPY_TO"/
  fi
  return 0
}
trap finish EXIT
trap 'exit 143' TERM INT  # a time limit's kill still copies the logs

if [ -n "$WHEELS" ] && compgen -G "$WHEELS/*.whl" > /dev/null; then
  SITE=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-site.XXXXXX")
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl \
    > "$RUN/logs/pip_install.log" 2>&1 || { cat "$RUN/logs/pip_install.log" >&2; echo "gpu_check: the wheels in" \
    "$WHEELS do not install with $PY (made for another Python? GPU_CHECK_WHEELS= skips them)" >&2; exit 1; }
  PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# The versions it runs with, and any requirement of the carried wheels or of hf-lcrypt that they do not meet.
"$PY" - "$RUN/versions.json" "$SITE" <<'EOF' 2> >(tee "$RUN/logs/versions.log" >&2)
import importlib.metadata as md
import json
import platform
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

out, site = Path(sys.argv[1]), sys.argv[2]
NAMES = ["torch", "transformers", "datasets", "evaluate", "accelerate", "huggingface-hub", "tokenizers", "safetensors",
         "pyarrow", "fsspec", "dill", "multiprocess", "numpy", "pillow", "scikit-learn", "matplotlib"]


def version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


versions = {"python": platform.python_version(), **{name: version(name) for name in NAMES}}
print(f"python {versions['python']} ({sys.executable})", file=sys.stderr)
carried = {d.metadata["Name"].lower() for d in md.distributions(path=[site])} if site else set()
for name in NAMES:
    where = " (carried wheel)" if name in carried else ""
    print(f"{name} {versions[name] or 'missing'}{where}", file=sys.stderr)
requirements = tomllib.loads(Path("pyproject.toml").read_text())["project"]["dependencies"]
for dist in md.distributions(path=[site]) if site else []:
    requirements += dist.requires or []
for line in requirements:
    req = Requirement(line)
    if req.name == "gradio" or (req.marker and not req.marker.evaluate({"extra": ""})):
        continue  # only the demo app needs gradio
    found = version(req.name)
    if found is None or not req.specifier.contains(found, prereleases=True):
        print(f"warning: {line} is not met ({found or 'missing'})", file=sys.stderr)

import torch  # after the printout, which helps most when an import fails

import hf_lcrypt.training  # fails here, in seconds, rather than in the first step

versions["cuda"] = torch.version.cuda
device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
print(f"torch CUDA {torch.version.cuda}, {device}; hf_lcrypt imports", file=sys.stderr)
out.write_text(json.dumps(versions, indent=2) + "\n")
EOF

if "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then BF16=(--bf16); else BF16=(); fi
WORKERS=$(( $(nproc) > 4 ? $(nproc) - 2 : 0 )); WORKERS=$(( WORKERS > 12 ? 12 : WORKERS ))
if [ "$TINY" = 1 ]; then
  MODEL=micro; SIZE=32; BLOCK=8; BATCH=8; WORKERS=0; TEACHER_EPOCHS=1; STUDENT_EPOCHS=1
  SUBSET=(--max_per_class 8); ATTACK=8
  BENCH_TRAIN=(--model micro --image-size 32 --block-size 8 --batch-size 8 --images 16 --steps 2 --rounds 2 \
    --warmup-steps 1)
  BENCH_INFER=(--batch 2 --repeats 2 --hidden 48 --layers 1 --heads 3 --fold-layers 1)
else
  MODEL=small; SIZE=224; BLOCK=16; BATCH=128; TEACHER_EPOCHS=10; STUDENT_EPOCHS=20
  SUBSET=(); ATTACK=256
  BENCH_TRAIN=(--model small --image-size 224 --block-size 16 --batch-size 128 --workers "$WORKERS")
  BENCH_INFER=(--batch 64 --repeats 21)
fi
COMPILE=(); [ "${GPU_CHECK_COMPILE:-0}" = 1 ] && COMPILE=(--torch_compile)
STEPS="{}"
step() {  # step NAME COMMAND...: runs COMMAND with its output in logs/NAME.log and records its seconds
  local name=$1 t0
  shift
  t0=$(date +%s)
  echo "gpu_check: $name ..." >&2
  "$@" > "$RUN/logs/$name.log" 2>&1 || { echo "gpu_check: $name failed; its log ends:" >&2; tail -n 30 \
    "$RUN/logs/$name.log" >&2; exit 1; }
  STEPS=$("$PY" -c 'import json, sys; print(json.dumps({**json.loads(sys.argv[1]), sys.argv[2]: int(sys.argv[3])}))' \
    "$STEPS" "$name" "$(( $(date +%s) - t0 ))")
}

step bench_training "$PY" scripts/bench_training.py "${BENCH_TRAIN[@]}" --data "$DATA" "${BF16[@]}" \
  --json "$RUN/bench_training.json"
step bench_inference "$PY" scripts/bench_inference.py "${BENCH_INFER[@]}" "${BF16[@]}" \
  --json "$RUN/bench_inference.json"
if [ "$QUICK" != 1 ]; then
  common=(--data "$DATA" --image_size "$SIZE" --block_size "$BLOCK" --key_file "$RUN/gpu-check.key"
    --per_device_train_batch_size "$BATCH" --per_device_eval_batch_size "$BATCH" --dataloader_num_workers "$WORKERS"
    --attack_max_images "$ATTACK" --save_total_limit 1 "${SUBSET[@]}" "${BF16[@]}")
  step teacher "$PY" scripts/train.py --mode plain --model resnet-small --num_train_epochs "$TEACHER_EPOCHS" \
    "${common[@]}" --output_dir "$RUN/teacher"
  step student "$PY" scripts/train.py --mode encrypted --model "$MODEL" --num_train_epochs "$STUDENT_EPOCHS" \
    "${common[@]}" --teacher "$RUN/teacher/model" --distillation hard --distill_alpha 0.5 "${COMPILE[@]}" \
    --output_dir "$RUN/student"
fi

"$PY" - "$RUN" "$TINY" "$QUICK" "$(( $(date +%s) - start ))" "$STEPS" > "$RUN/gpu-check.json" <<'EOF'
import json
import sys
from pathlib import Path

out, tiny, quick = Path(sys.argv[1]), sys.argv[2] == "1", sys.argv[3] == "1"
seconds, steps = int(sys.argv[4]), sys.argv[5]


def run_summary(folder: Path) -> dict:
    metrics = json.loads((folder / "model" / "metrics.json").read_text())
    seen = metrics["training"]["epoch"] * metrics["data"]["splits"]["train"]
    args = metrics["training_args"]
    return {
        "mode": metrics["mode"],
        "model": metrics["model"]["preset"],
        "parameters": metrics["model"]["parameters"],
        "image_size": metrics["model"]["image_size"],
        "block_size": metrics["model"]["block_size"],
        "bf16": args["bf16"],
        "torch_compile": args["torch_compile"],
        "epochs": metrics["training"]["epoch"],
        "test_accuracy": metrics["test"]["accuracy"],
        "test_macro_f1": metrics["test"]["f1"],
        "test_images": metrics["test"]["num_images"],
        "train_seconds": round(metrics["timings"]["train_seconds"], 1),
        "train_images_per_second": round(seen / metrics["timings"]["train_seconds"], 1),
        "wrong_key_accuracy": json.loads((folder / "model" / "attack_report.json").read_text())["accuracy"]["wrong_key"],
    }


bench_training = json.loads((out / "bench_training.json").read_text())
bench_inference = json.loads((out / "bench_inference.json").read_text())
summary = {
    "device": bench_training["device"],
    "tiny": tiny,
    "quick": quick,
    "versions": json.loads((out / "versions.json").read_text()),
    "bench_training": {**bench_training, "target": ">= 0.98"},
    "bench_inference": {**bench_inference, "target": "<= 1.01"},
    "teacher": None if quick else run_summary(out / "teacher"),
    "student": None if quick else {**run_summary(out / "student"), "distilled_from": "teacher"},
    "step_seconds": json.loads(steps),
    "total_seconds": seconds,
}
print(json.dumps(summary, indent=2))
EOF
cat "$RUN/gpu-check.json"
