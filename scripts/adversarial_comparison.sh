#!/usr/bin/env bash
# Standard, PGD (5 steps), TRADES (5 steps) and FGSM-RS training of one model on the synthetic
# set, then PGD-10 and aa-lite (10 steps per stage) at 8/255 on the same test images: the numbers
# behind the README's adversarial-training table. A developer's measurement (the defaults: 1,000
# training images, 2 epochs, 200 test images; about 5 minutes for a width-4 PreAct-18 and 15 for
# a MoCSE of expert width 2 on 2 cores), not a CI step.
#
#   scripts/adversarial_comparison.sh OUT_DIR --model preact18 --width 4
#   TRAIN_IMAGES=5000 EPOCHS=5 scripts/adversarial_comparison.sh OUT_DIR --model mocse --expert-width 2
#
# Prints a Markdown table (robust accuracy, clean accuracy) and leaves the runs and the JSON
# reports in OUT_DIR.
set -euo pipefail
out=${1:?usage: adversarial_comparison.sh OUT_DIR MODEL_FLAGS...}
shift
mocse=${MOCSE:-target/release/mocse}
train_images=${TRAIN_IMAGES:-1000}
epochs=${EPOCHS:-2}
test_images=${TEST_IMAGES:-200}
steps=${ADV_STEPS:-5}
mkdir -p "$out"
common=(--train-subset "$train_images" --test-subset "$test_images" --batch-size 50 --epochs "$epochs"
        --lr 0.05 --augment none --device cpu --seed 0)
declare -A method=(
    [standard]=""
    [pgd]="--adv pgd --steps $steps --adv-eval-subset 0"
    [trades]="--adv trades --steps $steps --adv-eval-subset 0"
    [fgsm-rs]="--adv fgsm-rs --adv-eval-subset 0"
)
for m in standard pgd trades fgsm-rs; do
    if [ ! -e "$out/$m/model.safetensors" ]; then
        # shellcheck disable=SC2086
        "$mocse" train "$@" "${common[@]}" ${method[$m]} --out "$out/$m" > "$out/$m.train.log" 2>&1
    fi
    for attack in pgd aa-lite; do
        "$mocse" eval --run "$out/$m" --test-subset "$test_images" --device cpu --attack "$attack" \
            --eps 8/255 --steps 10 --json "$out/$m.$attack.json" > /dev/null 2> "$out/$m.$attack.log"
    done
done
echo "| training | clean | PGD-10 | aa-lite |"
echo "|---|---:|---:|---:|"
for m in standard pgd trades fgsm-rs; do
    python3 - "$out" "$m" <<'PY'
import json, sys
out, m = sys.argv[1], sys.argv[2]
pgd = json.load(open(f"{out}/{m}.pgd.json"))
aa = json.load(open(f"{out}/{m}.aa-lite.json"))
pct = lambda v: f"{100 * v:.1f}%"
print(f"| {m} | {pct(pgd['clean_accuracy'])} | {pct(pgd['adversarial']['robust_accuracy'])} | "
      f"{pct(aa['adversarial']['robust_accuracy'])} |")
PY
done
