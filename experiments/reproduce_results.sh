#!/usr/bin/env bash
# Every run behind docs/results.md and experiments/notebook.md, with its exact settings and seed; then the tables.
# About 35 hours on 2 CPU cores.
# Stages (STAGES="teachers vits seeds medmnist geometry ablation figures" by default; pick some to rerun only those):
#   teachers  the key holder's CNN on plain images (the plain CNN rows, and the ViTs' teachers)
#   vits      the keyed ViT, `encrypted` and `fold` (= plain ViT, then folded), distilled from the teacher
#   seeds     the brain MRI pair again with other seeds (SEEDS, default 1 to 28), 30 epochs, and the 200-epoch LC25000 pair
#             (LC_SEEDS="1 2 3"): encrypted vs plain over seeds
#   medmnist  PneumoniaMNIST sanity rows (official splits, 28x28)
#   geometry  64/8 against the seed paper's 200/25 and ViT's usual 224/16, on a brain MRI subset
#   ablation  10-epoch variants of the ViT recipe on brain MRI, the larger `tiny` preset for 25 epochs, the ViT at 128/16,
#             the recipe for 240 epochs (both modes) and with a weight average,
#             and the seeds stage's encrypted runs with an MLP patch embedding (MLP_SEEDS, default 4 to 9),
#             and the seeds stage's pairs with a weight average (EMA_SEEDS, default 16 and 17)
#   figures   the tables' figures (confusion matrices, robustness curves) of every run in $OUT into experiments/figures,
#             then the ones docs/results.md shows (DOC_FIGURES) into docs/results; the tables are printed after any
#             stage, the figures written only with this one, so that a partial rerun leaves the committed figures alone
# A seed list set empty runs none of its runs: STAGES=seeds SEEDS="18 19" LC_SEEDS= runs two brain MRI pairs only.
# The small models run one per core (OMP_NUM_THREADS=1, two at a time): faster in total than one run on two threads.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/results}
DATA=${DATA_ROOT:-../shared/data}
PY=${PY:-.venv/bin/python}
SEED=${SEED:-0}
STAGES=${STAGES:-teachers vits seeds medmnist geometry ablation figures}
common=(--per_device_train_batch_size 32 --learning_rate 1e-3 --seed "$SEED" --attack_max_images 128 --logging_steps 50)
# The ViTs' embeddings as the recorded runs had them (the defaults before the key-hiding ones): the preset's own
# initialisation and the weight decay of every other weight.
former=(--embedding_init_scale 1 --embedding_weight_decay 0.05)
at64=(--image_size 64 --block_size 8)
at128=(--image_size 128 --block_size 16)  # the same 64 blocks as 64/8, so about the ViT's cost, at 4 times the pixels
distil=(--distillation soft --distill_temperature 2)

stage() { [[ " $STAGES " == *" $1 "* ]]; }
cnn() { OMP_NUM_THREADS=${THREADS:-1} $PY scripts/train.py "${common[@]}" "$@"; }  # later flags win
train() { cnn "${former[@]}" "$@"; }  # a ViT
# The keyed ViT in both modes (`fold` = the plain ViT, then folded), side by side: vit_pair NAME FLAGS...
vit_pair() {
  local name=$1
  shift
  for mode in encrypted fold; do
    train --model micro --mode "$mode" "$@" --output_dir "$OUT/$name-$mode" &
  done
  wait
}

brain=(--data "$DATA/brain-tumor-mri/train" --key_file "$OUT/brain-tumor-mri.key")
brain_teacher=$OUT/brain-tumor-mri/teacher-resnet-small
if stage teachers; then
  THREADS=2 cnn "${brain[@]}" --model resnet-small --mode plain --num_train_epochs 30 "${at64[@]}" \
    --output_dir "$brain_teacher"
fi
if stage vits; then
  vit_pair brain-tumor-mri/vit "${brain[@]}" --num_train_epochs "${BRAIN_EPOCHS:-150}" "${at64[@]}" \
    --teacher "$brain_teacher/model" "${distil[@]}" --tta
fi

# LC25000: histology slides have no up or down, so all 8 orientations (its near-copies are rotated and flipped
# versions of 250 originals per class). The ViT sees 128x128; its teacher 64x64, then (the better one) 128x128.
lc=(--data "$DATA/lc25000" --key_file "$OUT/lc25000.key" --augment_orientation)
lc_teacher=$OUT/lc25000/teacher-resnet-small-orient
if stage teachers; then
  THREADS=2 cnn "${lc[@]}" --model resnet-small --mode plain --num_train_epochs 30 "${at64[@]}" \
    --output_dir "$lc_teacher"
  THREADS=2 cnn "${lc[@]}" --model resnet-small --mode plain --num_train_epochs 30 "${at128[@]}" \
    --output_dir "$lc_teacher-128"
fi
if stage vits; then
  vit_pair lc25000/vit128-200ep "${lc[@]}" --num_train_epochs 200 "${at128[@]}" "${distil[@]}" \
    --teacher "$lc_teacher/model"
  vit_pair lc25000/vit128 "${lc[@]}" --num_train_epochs 100 "${at128[@]}" "${distil[@]}" \
    --teacher "$lc_teacher/model"
  vit_pair lc25000/vit128-teacher128 "${lc[@]}" --num_train_epochs 80 "${at128[@]}" "${distil[@]}" \
    --teacher "$lc_teacher-128/model"
fi

if stage seeds; then  # one held-out test split for all (--split_seed stays 0), the seed-0 teacher
  for seed in ${SEEDS-$(seq 1 28)}; do
    vit_pair "brain-tumor-mri-seeds/seed-$seed/vit" "${brain[@]}" --num_train_epochs "${SEED_EPOCHS:-30}" "${at64[@]}" \
      --teacher "$brain_teacher/model" "${distil[@]}" --seed "$seed"
  done
  for seed in ${LC_SEEDS-1 2 3}; do  # the 200-epoch LC25000 pair again (2 hours a pair)
    vit_pair "lc25000-seeds/seed-$seed/vit" "${lc[@]}" --num_train_epochs 200 "${at128[@]}" "${distil[@]}" \
      --teacher "$lc_teacher/model" --seed "$seed"
  done
fi

if stage medmnist; then
  for mode in encrypted fold; do
    train --data "$DATA/medmnist/pneumoniamnist.npz" --model micro --mode "$mode" --image_size 28 --block_size 4 \
      --num_train_epochs 20 --key_file "$OUT/pneumoniamnist.key" --output_dir "$OUT/pneumoniamnist/vit-$mode" &
  done
  wait
fi

if stage geometry; then
  mri=(--data "$DATA/brain-tumor-mri/train" --model micro --mode encrypted --max_per_class 250 --num_train_epochs 20
       --key_file "$OUT/brain-tumor-mri.key")
  train "${mri[@]}" --image_size 64 --block_size 8 --output_dir "$OUT/geometry/vit-64-8" &
  train "${mri[@]}" --image_size 200 --block_size 25 --output_dir "$OUT/geometry/vit-200-25" &
  wait
  THREADS=2 train "${mri[@]}" --image_size 224 --block_size 16 --output_dir "$OUT/geometry/vit-224-16"
fi

if stage ablation; then
  mri=(--data "$DATA/brain-tumor-mri/train" --model micro --mode encrypted --num_train_epochs 10 "${at64[@]}"
       --attack_max_images 64 --key_file "$OUT/brain-tumor-mri.key")
  teach=(--teacher "$OUT/brain-tumor-mri/teacher-resnet-small/model")
  train "${mri[@]}" --output_dir "$OUT/ablation/base" &
  train "${mri[@]}" --label_smoothing_factor 0.1 --output_dir "$OUT/ablation/ls01" &
  wait
  train "${mri[@]}" "${teach[@]}" --distillation hard --output_dir "$OUT/ablation/distill-hard" &
  train "${mri[@]}" "${teach[@]}" --distillation soft --distill_temperature 2 --output_dir "$OUT/ablation/distill-soft" &
  wait
  train "${mri[@]}" --mixup 0.2 --output_dir "$OUT/ablation/mixup02"
  THREADS=2 train "${mri[@]}" "${teach[@]}" --distillation soft --distill_temperature 2 --model tiny \
    --num_train_epochs 25 --attack_max_images 128 --output_dir "$OUT/extra/tiny-encrypted"
  # the ViT at 128/16 (what helped on LC25000), 120 epochs instead of the recipe's 150 so that it fits a session
  THREADS=2 train "${brain[@]}" --model micro --mode encrypted --num_train_epochs 120 "${at128[@]}" "${teach[@]}" \
    "${distil[@]}" --output_dir "$OUT/extra/vit128-encrypted"
  # the recipe on a longer schedule, 240 epochs instead of 150, both modes (each alone on both cores, about 2 hours)
  for mode in encrypted fold; do
    THREADS=2 train "${brain[@]}" --model micro --mode "$mode" --num_train_epochs 240 "${at64[@]}" "${teach[@]}" \
      "${distil[@]}" --tta --output_dir "$OUT/extra/vit-240ep-$mode"
  done
  # the weight average on the recipe's own schedule: the run scores its average and its best checkpoint on test
  THREADS=2 train "${brain[@]}" --model micro --mode encrypted --num_train_epochs 150 "${at64[@]}" "${teach[@]}" \
    "${distil[@]}" --ema_decay 0.999 --tta --output_dir "$OUT/extra/vit-ema-encrypted"
  # the MLP patch embedding against the linear one: the seeds stage's encrypted runs with it, two seeds at a time
  mlp_seeds=(${MLP_SEEDS-4 5 6 7 8 9})
  for ((i = 0; i < ${#mlp_seeds[@]}; i += 2)); do
    for seed in "${mlp_seeds[@]:i:2}"; do
      train "${brain[@]}" --model micro --patch_embedding mlp --mode encrypted --num_train_epochs "${SEED_EPOCHS:-30}" \
        "${at64[@]}" "${teach[@]}" "${distil[@]}" --seed "$seed" \
        --output_dir "$OUT/brain-tumor-mri-mlp/seed-$seed/vit-encrypted" &
    done
    wait
  done
  # the weight average (--ema_decay) against the best checkpoint, within each run: the seeds stage's pairs with it
  for seed in ${EMA_SEEDS-16 17}; do
    vit_pair "brain-tumor-mri-ema/seed-$seed/vit" "${brain[@]}" --num_train_epochs "${SEED_EPOCHS:-30}" "${at64[@]}" \
      "${teach[@]}" "${distil[@]}" --seed "$seed" --ema_decay 0.999
  done
fi

figures=()
if stage figures; then figures=(--figures experiments/figures); fi
for folder in brain-tumor-mri lc25000 pneumoniamnist geometry ablation extra brain-tumor-mri-mlp brain-tumor-mri-ema; do
  if [ -d "$OUT/$folder" ]; then
    echo "## $folder"
    $PY experiments/results_table.py "$OUT/$folder" "${figures[@]}"
  fi
done
DOC_FIGURES=(brain-tumor-mri-vit-encrypted-confusion brain-tumor-mri-vit-encrypted-noise
             lc25000-vit128-200ep-fold-confusion pneumoniamnist-vit-encrypted-confusion)
if stage figures; then
  for name in "${DOC_FIGURES[@]}"; do
    if [ -f "experiments/figures/$name.png" ]; then mv "experiments/figures/$name.png" docs/results/; fi
  done
fi
if [ -d "$OUT/brain-tumor-mri-seeds" ]; then
  echo "## brain-tumor-mri-seeds"
  $PY experiments/seed_table.py "$OUT/brain-tumor-mri-seeds"
fi
if [ -d "$OUT/brain-tumor-mri-mlp" ] && [ -d "$OUT/brain-tumor-mri-seeds" ]; then  # each MLP run against its seed's linear one
  echo "## brain-tumor-mri-mlp against brain-tumor-mri-seeds"
  $PY experiments/seed_table.py --compare patch_embedding "$OUT/brain-tumor-mri-mlp" \
    $(for d in "$OUT"/brain-tumor-mri-mlp/seed-*; do echo "$OUT/brain-tumor-mri-seeds/${d##*/}/vit-encrypted"; done)
fi
if [ -d "$OUT/brain-tumor-mri-ema" ]; then
  for mode in encrypted fold; do
    echo "## brain-tumor-mri-ema, $mode: the weight average against the best checkpoint"
    $PY experiments/seed_table.py --compare weight_average "$OUT"/brain-tumor-mri-ema/seed-*/vit-$mode
  done
fi
if [ -d "$OUT/lc25000-seeds" ]; then  # with the seed-0 pair of the same recipe
  echo "## lc25000-seeds"
  $PY experiments/seed_table.py "$OUT/lc25000/vit128-200ep-encrypted" "$OUT/lc25000/vit128-200ep-fold" "$OUT/lc25000-seeds"
fi
