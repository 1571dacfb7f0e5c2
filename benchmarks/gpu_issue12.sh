#!/usr/bin/env bash
# The issue-12 GPU checks in one call (prepared for a session that is lent a GPU): the
# Triton kernel's tests on CUDA (values and gradients against the PyTorch kernel, float32
# and bf16), the kernels alone against FlashAttention (SDPA), then training steps against
# FlashAttention and HuggingFace at 16K, 64K and 256K, the PyTorch kernel at 64K for the
# before/after, the MFU configuration (d_model 1024, 16 heads) at 64K, and a 1M-token step's
# peak memory with the Triton kernel.
# Usage: bash benchmarks/gpu_issue12.sh OUT_DIR   (about 8 minutes on an H100/H200)
set -uo pipefail
out=${1:-gpu_issue12}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
    | tee -a "$out/gpu.txt"
timeout 120 python -m pytest -q -x tests/test_triton_attention.py tests/test_attention_backends.py \
    2>&1 | tail -15 | tee "$out/tests.txt"
timeout 90 python benchmarks/attention_kernels.py --lengths 16384 65536 262144 \
    | tee "$out/kernels_bf16.md"
timeout 40 python benchmarks/attention_kernels.py --lengths 65536 --dtype float32 \
    --backends torch,triton | tee "$out/kernels_f32.md"
timeout 200 python benchmarks/bench_core.py --device cuda --bf16 --backend triton \
    --impls seqformer,sdpa,hf --lengths 16384 65536 262144 --repeats 3 \
    --warmup-max-len 262144 --timeout 60 | tee "$out/speed.md"
timeout 60 python benchmarks/bench_core.py --device cuda --bf16 --backend torch \
    --impls seqformer --lengths 65536 --repeats 3 --warmup-max-len 65536 --timeout 50 \
    | tee "$out/speed_torch_kernel.md"
timeout 60 python benchmarks/bench_core.py --device cuda --bf16 --backend triton \
    --impls seqformer --d-model 1024 --heads 16 --lengths 65536 --repeats 3 \
    --warmup-max-len 65536 --timeout 50 | tee "$out/mfu.md"
timeout 60 python benchmarks/memory.py --device cuda --bf16 --lengths 1048576 \
    --ff-chunk-size 65536 --extra attn_backend=triton --timeout 50 \
    --json "$out/memory.json" | tee "$out/memory.md"
