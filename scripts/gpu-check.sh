#!/usr/bin/env bash
# The whole GPU check in one call, on a machine with a GPU (run scripts/gpu-bundle.sh first,
# where cargo is, and carry .gpu/): environment, selftest, the GPU tests, the benchmarks
# (kernels and cuDNN), Table 1's quick reproduction and the paper preset's time estimate, and
# the PyTorch reference. Everything is written under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/mocse-gpu-check}
mkdir -p "$OUT"
{
    date -u
    nvidia-smi
    ldconfig -p | grep -E 'libcuda|nvrtc|cudnn'
} > "$OUT/env.txt" 2>&1

# NVRTC and cuDNN may live only in the Python environment's nvidia wheels.
site=$(python3 -c 'import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]))' 2>/dev/null || true)
if [ -n "$site" ]; then
    for lib in "$site"/nvidia/*/lib "$site"/nvidia/cu13/lib; do
        [ -d "$lib" ] && LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    done
    export LD_LIBRARY_PATH
fi
echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}" >> "$OUT/env.txt"

M=.gpu/mocse
export MOCSE_CACHE=$PWD/.gpu/cache MOCSE_TESTDATA=$PWD/.gpu
{
    $M selftest --device cuda
    echo "== tests"
    .gpu/devices --nocapture --test-threads 1
    .gpu/fused_unfused --nocapture --test-threads 1
    .gpu/corruptions --test-threads 1
    .gpu/corruption_reference --nocapture --test-threads 1
    # The attack kernels and whole PGD and APGD-T attacks on cuda against cpu (the CLI tests need cargo's paths).
    .gpu/attack every_device --nocapture --test-threads 1
    .gpu/attack pgd_and_apgd_accuracy --nocapture --test-threads 1
} > "$OUT/selftest_and_tests.txt" 2>&1

: > "$OUT/train_step.jsonl"
for impl in kernels cudnn; do
    for cfg in "preact18 --width 16 --batch-size 128" "preact18 --width 64 --batch-size 128" \
               "mocse --expert-width 16 --batch-size 128" "mocse --expert-width 16 --batch-size 128 --unfused"; do
        # shellcheck disable=SC2086
        $M bench --what train-step --model $cfg --device cuda --conv-impl $impl --warmup 3 --steps 10 \
            --json "$OUT/one.json" >> "$OUT/bench_log.txt" 2>&1 && cat "$OUT/one.json" >> "$OUT/train_step.jsonl"
    done
done
rm -f "$OUT/one.json"
$M bench --what conv-layers --model mocse --expert-width 16 --batch-size 128 --device cuda --warmup 3 --steps 10 \
    --json "$OUT/conv_layers_mocse.json" >> "$OUT/bench_log.txt" 2>&1
$M bench --what conv-layers --model preact18 --width 64 --batch-size 128 --device cuda --warmup 3 --steps 10 \
    --json "$OUT/conv_layers_preact18.json" >> "$OUT/bench_log.txt" 2>&1
$M bench --what corrupt --batch-size 10000 --device cuda --warmup 1 --steps 3 --json "$OUT/corrupt.json" \
    >> "$OUT/bench_log.txt" 2>&1
: > "$OUT/pgd.jsonl"
for cfg in "preact18 --width 64 --batch-size 128" "mocse --expert-width 16 --batch-size 128"; do
    # shellcheck disable=SC2086
    $M bench --what pgd --model $cfg --device cuda --warmup 2 --steps 5 --json "$OUT/one.json" \
        >> "$OUT/bench_log.txt" 2>&1 && cat "$OUT/one.json" >> "$OUT/pgd.jsonl"
done
# Table 1's pipeline on the GPU (the quick preset, 1 epoch) and the paper preset's estimate there.
$M reproduce --preset quick --epochs 1 --device cuda --out "$OUT/table1-quick" > "$OUT/reproduce.txt" 2>&1
timeout 120 $M reproduce --preset paper --device cuda --out "$OUT/table1-paper-estimate" 2>&1 \
    | grep -m 1 "estimated time" >> "$OUT/reproduce.txt"
python3 benches/pytorch_peer.py --all --device cuda > "$OUT/pytorch.jsonl" 2>> "$OUT/bench_log.txt"
tail -n 3 "$OUT/selftest_and_tests.txt"
tail -n 12 "$OUT/reproduce.txt"
cat "$OUT/train_step.jsonl" "$OUT/pytorch.jsonl"
grep -E "^all " "$OUT/bench_log.txt"
