#!/usr/bin/env bash
# Every GPU check in one call, for a session lent a GPU: about 8 minutes on an H200 without
# FASTA, 9 with it (the steps' own times on 2026-12-04). Each step has its own timeout, so
# one that hangs cannot take the others' time:
#   1. the Triton kernel's tests on CUDA (values and gradients against the PyTorch kernel,
#      float32 and bf16, match attention's null key) and the backends' first-use check;
#   2. training steps against FlashAttention (SDPA) and HuggingFace at 16K, 64K and 256K;
#   3. seqformer at 64K and 128K with all heads in one pass; the MFU configuration
#      (d_model 1024, 16 heads) at 64K;
#   4. a 1M-token training step's peak memory;
#   5. decoding speed, eager against compiled, of a model trained here for a few steps;
#   6. with FASTA set, the dna-100k preset (131K windows, copies on both strands) trained
#      for 45 seconds on it: tokens/s and that it runs end to end.
# Usage: [FASTA=genome.fa] bash benchmarks/gpu_check.sh OUT_DIR
# It needs seqformer importable with its dependencies; the lent H200's image lacks
# biopython, pretty_midi, mido and importlib_resources (carry them as wheels).
# Figures go to OUT_DIR as markdown tables (progress and errors too), ready for
# docs/performance.md; the log on stdout says how long each step took.
set -uo pipefail
out=${1:-gpu_check}
py=${PYTHON:-python3}
mkdir -p "$out"
step() {  # step NAME TIMEOUT_S COMMAND...: run with a timeout, output to OUT/NAME and stdout
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    echo "== $name (limit ${limit} s)"
    timeout "$limit" "$@" 2>&1 | tee "$out/$name"
    echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s"
}
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
$py -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
    | tee -a "$out/gpu.txt"
step tests.txt 150 $py -m pytest -q -x tests/test_triton_attention.py \
    tests/test_attention_backends.py
step speed.md 170 $py benchmarks/bench_core.py --device cuda --bf16 --backend triton \
    --impls seqformer,sdpa,hf --lengths 16384 65536 262144 --repeats 3 \
    --warmup-max-len 262144 --timeout 45
# the 64K step ran at half the tokens/s of 256K on an H200 with heads one at a time (the
# default from 64K on, GROUP_ROWS); all four heads in one pass, to compare with speed.md
step groups.md 60 $py benchmarks/bench_core.py --device cuda --bf16 --backend triton \
    --impls seqformer --lengths 65536 131072 --head-group-size 4 --repeats 3 \
    --warmup-max-len 131072 --timeout 28
step mfu.md 40 $py benchmarks/bench_core.py --device cuda --bf16 --backend triton \
    --impls seqformer --d-model 1024 --heads 16 --lengths 65536 --repeats 3 \
    --warmup-max-len 65536 --timeout 35
step memory.md 40 $py benchmarks/memory.py --device cuda --bf16 --lengths 1048576 \
    --ff-chunk-size 65536 --extra attn_backend=triton --timeout 35 --json "$out/memory.json"
# compiling the decoding step took 148 s on an H200: one batch size, one round
step decode.md 220 bash -c 'seqformer train midi --max-steps 3 --out "$0/tiny" \
    train.max_minutes=null > "$0/tiny_train.txt" 2>&1 && "$1" benchmarks/decode_speed.py \
    --model "$0/tiny" --length 400 --ks 8 --rounds 1 --device cuda' "$out" "$py"
if [ -n "${FASTA:-}" ]; then
    step dna100k.txt 70 seqformer train dna --fasta "$FASTA" --config dna-100k \
        --out "$out/dna100k" train.max_minutes=0.75 data.val_windows=2
fi
