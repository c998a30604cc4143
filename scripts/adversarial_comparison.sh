#!/usr/bin/env bash
# Standard, PGD, TRADES and FGSM-RS training of one model on the synthetic set, then PGD-10 and
# aa-lite (10 steps per stage) at the training eps on the same test images: the numbers behind
# the README's adversarial-training table. A developer's measurement, not a CI step. The
# defaults (2,000 training images, 10 epochs, 500 test images, eps 2/255, training attacks of 2
# steps of eps with batch norm in evaluation mode) take about 15 minutes for a width-4
# PreAct-18 and over an hour for a MoCSE of expert width 2 on 2 cores.
#
#   scripts/adversarial_comparison.sh OUT_DIR --model preact18 --width 4
#   EPOCHS=5 scripts/adversarial_comparison.sh OUT_DIR --model mocse --expert-width 2
#
# Knobs (environment): TRAIN_IMAGES, EPOCHS, TEST_IMAGES, EPS, ADV_STEPS, ATTACK_BN (the training
# attack's batch norm for PGD and FGSM-RS; TRADES attacks in evaluation mode as Zhang et al.).
# With ATTACK_BN=train (the literature's choice for PGD and FGSM-RS) these small networks stay
# at chance for many epochs on this data, in mocse and in a PyTorch re-implementation alike.
#
# Prints a Markdown table (clean, PGD-10 and aa-lite accuracy) and leaves the runs and the JSON
# reports in OUT_DIR; a run already trained there is evaluated again, not retrained.
set -euo pipefail
out=${1:?usage: adversarial_comparison.sh OUT_DIR MODEL_FLAGS...}
shift
mocse=${MOCSE:-target/release/mocse}
train_images=${TRAIN_IMAGES:-2000}
epochs=${EPOCHS:-10}
test_images=${TEST_IMAGES:-500}
eps=${EPS:-2/255}
steps=${ADV_STEPS:-2}
bn=${ATTACK_BN:-eval}
mkdir -p "$out"
common=(--train-subset "$train_images" --test-subset "$test_images" --batch-size 50 --epochs "$epochs"
        --lr 0.05 --augment none --device cpu --seed 0)
declare -A method=(
    [standard]=""
    [pgd]="--adv pgd --eps $eps --alpha $eps --steps $steps --attack-bn $bn --adv-eval-subset 0"
    [trades]="--adv trades --eps $eps --alpha $eps --steps $steps --adv-eval-subset 0"
    [fgsm-rs]="--adv fgsm-rs --eps $eps --attack-bn $bn --adv-eval-subset 0"
)
for m in standard pgd trades fgsm-rs; do
    if [ ! -e "$out/$m/model.safetensors" ]; then
        # shellcheck disable=SC2086
        "$mocse" train "$@" "${common[@]}" ${method[$m]} --out "$out/$m" > "$out/$m.train.log" 2>&1
    fi
    "$mocse" eval --run "$out/$m" --test-subset "$test_images" --device cpu --attack pgd,aa-lite \
        --eps "$eps" --steps 10 --json "$out/$m.json" > "$out/$m.eval.log" 2>&1
done
echo "| training | clean | PGD-10 | aa-lite |"
echo "|---|---:|---:|---:|"
for m in standard pgd trades fgsm-rs; do
    python3 - "$out" "$m" <<'PY'
import json, sys
out, m = sys.argv[1], sys.argv[2]
report = json.load(open(f"{out}/{m}.json"))
pct = lambda v: f"{100 * v:.1f}%"
robust = lambda attack: pct(report["adversarial"][attack]["robust_accuracy"])
print(f"| {m} | {pct(report['clean_accuracy'])} | {robust('pgd')} | {robust('aa-lite')} |")
PY
done
