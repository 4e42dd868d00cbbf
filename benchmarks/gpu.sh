#!/usr/bin/env bash
# Every GPU figure of the benchmarks, from one prepared script, in under 10 minutes on one lent GPU (H100 / H200):
#   1. decoding (issue 13): generate() of ours, Marian and CTranslate2 in bf16 autocast, CTranslate2 in bfloat16 /
#      int8_bfloat16, then CTranslate2 in float16 / int8_float16 (benchmarks/decode.py; batches of 64 and single
#      sentences, beam 4); BLEU of a trained model when BLEU_MODEL names its folder (copy it next to the repository);
#   2. the training step (bf16, MFU over the measured bf16 matmul peak; benchmarks/train_step.py, small/base/big).
# Each step has its own time limit, so one that hangs cannot eat the others' share of the lease.
#
#   benchmarks/gpu.sh                    # on the GPU machine: JSON files in benchmarks/results/*_gpu*.json
#   benchmarks/gpu.sh --tiny             # every command in its tiny mode on CPU (tests/benchmarks/test_gpu_script.py)
#   BENCHMARK_OUTPUT_DIR=/tmp/x benchmarks/gpu.sh --tiny
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${BENCHMARK_OUTPUT_DIR:-benchmarks/results}"
mkdir -p "$OUT"
if [ "${1:-}" = "--tiny" ]; then
    MODE=(--device cpu --tiny --threads 1); SUFFIX=tiny; LIMIT=600
else
    MODE=(--device cuda); SUFFIX=gpu; LIMIT=240
fi
BLEU=(--bleu-sentences 0)
if [ -n "${BLEU_MODEL:-}" ]; then BLEU=(--bleu-model "$BLEU_MODEL" --bleu-batch-size 64); fi
run() { echo "+ $*"; timeout "$LIMIT" "$@"; }

nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi (CPU run)"
run python -m benchmarks.decode "${MODE[@]}" --dtype bf16 --strategies beam4 "${BLEU[@]}" \
    --output "$OUT/decode_${SUFFIX}_bf16.json"
run python -m benchmarks.decode "${MODE[@]}" --dtype bf16 --strategies beam4 --bleu-sentences 0 \
    --engines ct2,"ct2 int8" --ct2-compute-types "$([ "$SUFFIX" = gpu ] && echo float16,int8_float16 || echo float32,int8)" \
    --output "$OUT/decode_${SUFFIX}_float16.json"
run python -m benchmarks.train_step "${MODE[@]}" --dtype bf16 --output "$OUT/train_step_${SUFFIX}.json"
echo "gpu.sh: done, results in $OUT"
