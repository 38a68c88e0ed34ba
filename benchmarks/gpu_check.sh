#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one run of under 10 minutes:
#   1. install (torch already on the machine is kept; otherwise FITV2_TORCH, default torch==2.11.0)
#   2. the attention backends as the model uses them (FlexAttention compiled, flash-attn varlen where
#      installed, torch's varlen, SDPA per image), forward and backward, fp32 and bf16, against SDPA
#   3. one DDP step on nccl against the same step without DDP
#   4. the throughput benchmark for FiTv2-B/2 and FiTv2-XL/2 in bf16: padded, packed and flat rows, MFU
#      against the matmul peak measured in the same run -> benchmarks/results/throughput_gpu.md
# Usage: bash benchmarks/gpu_check.sh            (OUT=folder to also copy the results there)
set -uo pipefail
cd "$(dirname "$0")/.."
status=0
start=$(date +%s)
if ! python -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
  echo "error: no CUDA device visible to python" >&2; exit 2
fi
python -m pip install -q -e ".[dev]" || { echo "error: install failed" >&2; exit 2; }
python -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
echo "== attention backends"; timeout 180 python benchmarks/gpu_check.py attention || status=1
echo "== DDP on nccl"; timeout 120 python benchmarks/gpu_check.py ddp || status=1
echo "== throughput (bf16)"
timeout 300 python benchmarks/throughput.py --device cuda --dtypes bf16 \
  --job FiTv2-B/2:imagenet-256,imagenet-1024:64:5 --job FiTv2-XL/2:imagenet-256,imagenet-1024:16:5 \
  --modes padded,packed,flat --sample FiTv2-B/2:8:50 --sample FiTv2-XL/2:8:50 \
  --out benchmarks/results/throughput_gpu.md --json benchmarks/results/throughput_gpu.json || status=1
if [ -n "${OUT:-}" ]; then cp benchmarks/results/throughput_gpu.* "$OUT"/ 2>/dev/null || true; fi
echo "done in $(( $(date +%s) - start )) s, status $status"
exit $status
