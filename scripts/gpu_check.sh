#!/usr/bin/env bash
# One command for a machine with one NVIDIA GPU (made for an H100) and no internet, about 5-8 minutes:
#   bash scripts/gpu_check.sh > gpu-check.json
# 1. scripts/bench_training.py and scripts/bench_inference.py at 224/16 with bf16 (a `small` ViT, ViT-S/16):
#    encrypted / plain ratios (targets >= 0.98 and <= 1.01);
# 2. a CNN teacher (resnet-small, plain images) and then a `small` ViT from scratch on encrypted brain MRI at 224/16,
#    bf16, distilled from that teacher, through scripts/train.py: test accuracy and training images/s.
# It prints one JSON summary on stdout (format: docs/training.md); each step's log is in $GPU_CHECK_OUT/logs.
# GPU_CHECK_TINY=1 runs the same steps at tiny sizes on a CPU in about a minute (tests/test_gpu_check.py does).
# Settings: GPU_CHECK_DATA (default ../shared/data/brain-tumor-mri/train), GPU_CHECK_OUT (outputs/gpu-check),
# GPU_CHECK_COMPILE=1 (train the student with --torch_compile), PYTHON (default: python).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
TINY=${GPU_CHECK_TINY:-0}
OUT=${GPU_CHECK_OUT:-outputs/gpu-check}
DATA=${GPU_CHECK_DATA:-../shared/data/brain-tumor-mri/train}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_EVALUATE_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE} PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ ! -e "$DATA" ]; then
  echo "gpu_check: no data at $DATA; set GPU_CHECK_DATA to the brain MRI training folder." >&2
  exit 1
fi
rm -rf "$OUT" && mkdir -p "$OUT/logs"
start=$(date +%s)

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

"$PY" scripts/bench_training.py "${BENCH_TRAIN[@]}" "${BF16[@]}" --json "$OUT/bench_training.json" \
  > "$OUT/logs/bench_training.log" 2>&1
"$PY" scripts/bench_inference.py "${BENCH_INFER[@]}" "${BF16[@]}" --json "$OUT/bench_inference.json" \
  > "$OUT/logs/bench_inference.log" 2>&1

common=(--data "$DATA" --image_size "$SIZE" --block_size "$BLOCK" --key_file "$OUT/gpu-check.key"
  --per_device_train_batch_size "$BATCH" --per_device_eval_batch_size "$BATCH" --dataloader_num_workers "$WORKERS"
  --attack_max_images "$ATTACK" --save_total_limit 1 "${SUBSET[@]}" "${BF16[@]}")
"$PY" scripts/train.py --mode plain --model resnet-small --num_train_epochs "$TEACHER_EPOCHS" "${common[@]}" \
  --output_dir "$OUT/teacher" > "$OUT/logs/teacher.log" 2>&1
"$PY" scripts/train.py --mode encrypted --model "$MODEL" --num_train_epochs "$STUDENT_EPOCHS" "${common[@]}" \
  --teacher "$OUT/teacher/model" --distillation hard --distill_alpha 0.5 "${COMPILE[@]}" \
  --output_dir "$OUT/student" > "$OUT/logs/student.log" 2>&1

"$PY" - "$OUT" "$TINY" "$(( $(date +%s) - start ))" <<'EOF'
import json
import sys
from pathlib import Path

out, tiny, seconds = Path(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3])


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
student = run_summary(out / "student")
summary = {
    "device": bench_training["device"],
    "tiny": tiny,
    "bench_training": {**bench_training, "target": ">= 0.98"},
    "bench_inference": {**bench_inference, "target": "<= 1.01"},
    "teacher": run_summary(out / "teacher"),
    "student": {**student, "distilled_from": "teacher"},
    "total_seconds": seconds,
}
print(json.dumps(summary, indent=2))
EOF
