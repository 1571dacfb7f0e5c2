#!/usr/bin/env bash
# The issue-11 GPU checks in one call (prepared for a session that is lent a GPU; not yet
# run): a real 1M- and 2M-token training step under bf16 autocast with the issue's config
# (peak torch.cuda.max_memory_allocated), with and without float64 streams, then one
# training step at 64K and 256K tokens against SDPA/FlashAttention and HuggingFace.
# Usage: bash benchmarks/gpu_issue11.sh OUT_DIR   (about 10 minutes on an H100/H200)
set -uo pipefail
out=${1:-gpu_issue11}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
python benchmarks/memory.py --device cuda --bf16 --lengths 1048576 2097152 --ff-chunk-size 65536 \
    --timeout 240 --json "$out/memory_exact.json" | tee "$out/memory_exact.md"
python benchmarks/memory.py --device cuda --bf16 --lengths 1048576 --ff-chunk-size 65536 \
    --extra exact_streams=false --timeout 240 --json "$out/memory_f32.json" \
    | tee "$out/memory_f32.md"
python benchmarks/bench_core.py --device cuda --bf16 --impls seqformer,sdpa,hf \
    --lengths 65536 262144 --repeats 3 --warmup-max-len 262144 --timeout 200 \
    | tee "$out/speed.md"
