#!/usr/bin/env bash
# Every GPU check in one call, for a session lent a GPU (about 8 minutes on an H100/H200;
# each step has its own timeout, so one that hangs cannot take the others' time):
#   1. the Triton kernel's tests on CUDA (values and gradients against the PyTorch kernel,
#      float32 and bf16, match attention's null key) and the backends' first-use check;
#   2. training steps against FlashAttention (SDPA) and HuggingFace at 16K, 64K and 256K;
#   3. the MFU configuration (d_model 1024, 16 heads) at 64K;
#   4. a 1M-token training step's peak memory;
#   5. decoding speed, eager against compiled, of a model trained here for a few steps.
# Usage: bash benchmarks/gpu_check.sh OUT_DIR   (figures as markdown tables in OUT_DIR,
# ready for docs/performance.md)
set -uo pipefail
out=${1:-gpu_check}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
    | tee -a "$out/gpu.txt"
timeout 100 python -m pytest -q -x tests/test_triton_attention.py tests/test_attention_backends.py \
    2>&1 | tail -15 | tee "$out/tests.txt"
timeout 170 python benchmarks/bench_core.py --device cuda --bf16 --backend triton \
    --impls seqformer,sdpa,hf --lengths 16384 65536 262144 --repeats 3 \
    --warmup-max-len 262144 --timeout 50 | tee "$out/speed.md"
timeout 60 python benchmarks/bench_core.py --device cuda --bf16 --backend triton \
    --impls seqformer --d-model 1024 --heads 16 --lengths 65536 --repeats 3 \
    --warmup-max-len 65536 --timeout 50 | tee "$out/mfu.md"
timeout 60 python benchmarks/memory.py --device cuda --bf16 --lengths 1048576 \
    --ff-chunk-size 65536 --extra attn_backend=triton --timeout 50 \
    --json "$out/memory.json" | tee "$out/memory.md"
timeout 80 bash -c 'seqformer train midi --max-steps 3 --out "$0/tiny" train.max_minutes=null \
    > "$0/tiny_train.txt" 2>&1 && python benchmarks/decode_speed.py --model "$0/tiny" \
    --length 1000 --ks 1 8 --device cuda' "$out" | tee "$out/decode.md"
