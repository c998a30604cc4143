#!/usr/bin/env bash
# The whole GPU check in one call, on a machine with a GPU (run scripts/gpu-bundle.sh first,
# where cargo is, and carry .gpu/): environment, selftest, the GPU tests, mocse's output and
# loss on cuda against its PyTorch twin, the benchmarks (the project's kernels and cuDNN), the
# PyTorch reference, Table 1's quick reproduction and compute-sanitizer over the selftest.
#
# Every stage runs under a time limit and the whole check under a deadline (GPU_CHECK_SECONDS,
# default 480), so a lease's short call still returns what ran. Results go to $OUT in at most
# eight files: log.txt (progress and the summary), env.txt, tests.txt, bench.jsonl,
# bench_log.txt, pytorch.jsonl, reproduce.txt and more.tar.gz (per-layer JSON, Table 1's run).
#
#     scripts/gpu-check.sh [STAGE ...]    # stages: env selftest bench pytorch summary twin tests
#                                         #         sanitizer layers profile reproduce (default: all)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/mocse-gpu-check}
mkdir -p "$OUT"
MORE=$(mktemp -d)
START=$(date +%s)
DEADLINE=$((START + ${GPU_CHECK_SECONDS:-480}))
LOG="$OUT/log.txt"

say() { echo "[$(($(date +%s) - START))s] $*" | tee -a "$LOG"; }

# run_for LIMIT OUTFILE CMD...: runs CMD for at most LIMIT seconds (less if the deadline is
# nearer, 10 s kept for packing up), appending to OUTFILE; skips it when no time is left.
run_for() {
    local limit=$1 file=$2 left
    shift 2
    left=$((DEADLINE - $(date +%s) - 10))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -le 5 ]; then
        say "skipped (deadline): $*"
        return 1
    fi
    local t0=$(date +%s)
    echo "== $*" >> "$file"
    timeout "$limit" "$@" >> "$file" 2>&1
    local rc=$?
    say "rc=$rc in $(($(date +%s) - t0))s (limit ${limit}s): $*"
    return $rc
}

# NVRTC and cuDNN may live only in the Python environment's nvidia wheels.
site=$(python3 -c 'import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]))' 2>/dev/null || true)
if [ -n "$site" ]; then
    for lib in "$site"/nvidia/*/lib "$site"/nvidia/cu13/lib; do
        [ -d "$lib" ] && LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    done
    export LD_LIBRARY_PATH
fi
M=.gpu/mocse
export MOCSE_CACHE=$PWD/.gpu/cache MOCSE_TESTDATA=$PWD/.gpu

stage_env() {
    {
        date -u
        nvidia-smi
        ldconfig -p | grep -E 'libcuda|nvrtc|cudnn'
        echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
        python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name(0))'
        nproc
    } > "$OUT/env.txt" 2>&1
    say "env: $(grep -m1 -o 'NVIDIA H[0-9]*[^|]*' "$OUT/env.txt" | head -1)"
    $M selftest --device cuda --only transpose 2>&1 | head -1 | tee -a "$LOG"  # driver and NVRTC versions
}

stage_selftest() {
    # Every launch checked as it ends, so a fault names its kernel.
    MOCSE_CUDA_SYNC=1 run_for 120 "$OUT/tests.txt" $M selftest --device cuda
    grep -ciE "fail|error" "$OUT/tests.txt" | sed 's/^/selftest lines with fail or error: /' | tee -a "$LOG"
    tail -n 2 "$OUT/tests.txt" | tee -a "$LOG"
}

stage_tests() {
    local T="$OUT/tests.txt"
    # The GPU-only tests are ignored without a GPU; here they run (and fail without one).
    run_for 90 "$T" .gpu/devices --include-ignored --nocapture --test-threads 1
    run_for 90 "$T" .gpu/fused_unfused --include-ignored --nocapture --test-threads 1
    run_for 60 "$T" .gpu/corruptions --test-threads 1
    run_for 90 "$T" .gpu/corruption_reference --nocapture --test-threads 1
    # The attack kernels and whole PGD and APGD-T attacks on cuda against cpu.
    run_for 60 "$T" .gpu/attack every_device --nocapture --test-threads 1
    run_for 90 "$T" .gpu/attack pgd_and_apgd_accuracy --nocapture --test-threads 1
    # Training that replays a CUDA graph of its step against training op by op, bit for bit.
    run_for 60 "$T" .gpu/training graph_replayed --include-ignored --nocapture --test-threads 1
    grep -E "^test result|FAILED|panicked" "$T" | sort | uniq -c | tee -a "$LOG"
}

# mocse's training-mode output and loss on cuda against its PyTorch twin on the same weights: in
# f32 (PyTorch in strict f32, tolerance 1e-4), and in bf16 against the same f32 twin (bf16
# operands round each product's inputs to 8 bits: 0.9% of the output, seen on an H200, so 3e-2).
stage_twin() {
    local model precision tolerance
    for model in "preact18 --width 16" "mocse --expert-width 16"; do
        for precision in f32 bf16; do
            tolerance=1e-4
            [ "$precision" = bf16 ] && tolerance=3e-2
            # shellcheck disable=SC2086
            run_for 60 "$OUT/tests.txt" $M bench --what train-step --model $model --batch-size 32 --device cuda \
                --precision $precision --warmup 0 --steps 1 --twin "$MORE/twin" &&
                run_for 60 "$OUT/tests.txt" python3 benches/pytorch_peer.py --twin "$MORE/twin" --device cuda \
                    --steps 1 --warmup 0 --tolerance $tolerance
            rm -rf "$MORE/twin"
        done
    done
    grep -E "twin check" "$OUT/tests.txt" | tee -a "$LOG"
}

stage_bench() {
    local precision impl cfg
    # Training steps in both precisions, the kernels and cuDNN alike (cuDNN takes the same
    # --precision: strict f32, or bf16 with tensor-op math).
    for precision in bf16 f32; do
        for impl in kernels cudnn; do
            for cfg in "preact18 --width 64 --batch-size 128" "mocse --expert-width 16 --batch-size 128" \
                       "mocse --expert-width 16 --batch-size 128 --unfused"; do
                # shellcheck disable=SC2086
                run_for 40 "$OUT/bench_log.txt" $M bench --what train-step --model $cfg --device cuda \
                    --conv-impl $impl --precision $precision --warmup 2 --steps 5 --json "$MORE/one.json" &&
                    cat "$MORE/one.json" >> "$OUT/bench.jsonl" && echo >> "$OUT/bench.jsonl"
            done
        done
    done
    grep -E "^(train|infer|all) " "$OUT/bench_log.txt" | tee -a "$LOG"
    rm -f "$MORE/one.json"
}

# Every convolution of both models timed alone (kernels and cuDNN), the corruptions and PGD.
stage_layers() {
    local precision cfg
    for precision in bf16 f32; do
        for cfg in "mocse --expert-width 16" "preact18 --width 64"; do
            # shellcheck disable=SC2086
            run_for 60 "$OUT/bench_log.txt" $M bench --what conv-layers --model $cfg --batch-size 128 \
                --device cuda --precision $precision --warmup 2 --steps 5 \
                --json "$MORE/conv_layers_${cfg%% *}_$precision.json"
        done
    done
    run_for 90 "$OUT/bench_log.txt" $M bench --what corrupt --batch-size 10000 --device cuda --warmup 1 \
        --steps 3 --json "$MORE/corrupt.json"
    for cfg in "preact18 --width 64 --batch-size 128" "mocse --expert-width 16 --batch-size 128"; do
        # shellcheck disable=SC2086
        run_for 60 "$OUT/bench_log.txt" $M bench --what pgd --model $cfg --device cuda --warmup 2 --steps 5 \
            --json "$MORE/one.json" && cat "$MORE/one.json" >> "$OUT/bench.jsonl" && echo >> "$OUT/bench.jsonl"
    done
    rm -f "$MORE/one.json"
}

stage_pytorch() {
    # The same configurations and batch as the bench stage, so the ratios are side by side.
    run_for 150 "$OUT/pytorch.jsonl" python3 benches/pytorch_peer.py --all --device cuda --batch-size 128 \
        --warmup 3 --steps 10
    grep -v '^==' "$OUT/pytorch.jsonl" | tee -a "$LOG"
}

# Table 1's pipeline on the GPU (the quick preset, 1 epoch) and the paper preset's estimate there.
stage_reproduce() {
    run_for 150 "$OUT/reproduce.txt" $M reproduce --preset quick --epochs 1 --device cuda --out "$MORE/table1-quick"
    run_for 60 "$MORE/paper-estimate.txt" $M reproduce --preset paper --device cuda --out "$MORE/table1-paper"
    grep -m 1 "estimated time" "$MORE/paper-estimate.txt" >> "$OUT/reproduce.txt"
    tail -n 12 "$OUT/reproduce.txt" | tee -a "$LOG"
}

# Out-of-bounds accesses over every selftest launch; races over a few shared-memory kernels
# (racecheck is slow).
stage_sanitizer() {
    run_for 150 "$OUT/tests.txt" compute-sanitizer --tool memcheck --print-limit 20 $M selftest --device cuda
    grep -E "ERROR SUMMARY" "$OUT/tests.txt" | tail -1 | tee -a "$LOG"
    run_for 90 "$OUT/tests.txt" compute-sanitizer --tool racecheck --print-limit 20 $M selftest --device cuda \
        --only "conv2d x2x5x7x3,conv2d x5x32x32x20,conv2d bf16 x2x8x8x64,conv2d bf16 x5x32x32x20,batch_norm_train_many_rows,global_avg_pool"
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$OUT/tests.txt" | tail -1 | tee -a "$LOG"
}

# Nsight Compute over every bf16 convolution kernel of one MoCSE training step (forward, both
# backward directions, the weight packing; speed of light, occupancy, warp stalls, memory;
# clocks left alone), into more.tar.gz's ncu.txt; the headline numbers in the log.
stage_profile() {
    run_for 150 "$MORE/ncu.txt" ncu --clock-control none --kernel-name regex:"conv2d_.*bf16|pack_conv" \
        --launch-count 130 --section SpeedOfLight --section Occupancy --section WarpStateStats \
        --section MemoryWorkloadAnalysis $M bench --what train-step --model mocse --expert-width 16 \
        --batch-size 128 --device cuda --precision bf16 --warmup 0 --steps 1
    grep -E "^  [a-z_0-9]+bf16|Duration|Compute \(SM\) Throughput|Memory Throughput|Achieved Occupancy" \
        "$MORE/ncu.txt" | head -80 | tee -a "$LOG"
}

# One table of everything measured: images/s, achieved TFLOP/s and the fraction of the bf16 peak.
stage_summary() {
    python3 scripts/gpu_summary.py "$OUT" "$MORE" | tee -a "$LOG"
}

stages=("$@")
# The most telling first: kernels right on the hardware, then the speed against cuDNN and PyTorch.
[ ${#stages[@]} -eq 0 ] && stages=(env selftest bench pytorch summary twin tests sanitizer layers summary profile reproduce)
for s in "${stages[@]}"; do
    say "stage $s"
    "stage_$s"
done
rm -rf "$MORE/table1-paper"
tar -czf "$OUT/more.tar.gz" -C "$MORE" . && rm -rf "$MORE"
say "done; results in $OUT"
