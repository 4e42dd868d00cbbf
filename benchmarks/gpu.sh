#!/usr/bin/env bash
# Every GPU figure of the benchmarks, from one prepared script, in under 10 minutes on one lent GPU (H100 / H200):
#   1. decoding (issue 13): generate() of ours, Marian and CTranslate2 in bf16 autocast, CTranslate2 in bfloat16 /
#      int8_bfloat16, then CTranslate2 in float16 / int8_float16 (benchmarks/decode.py; batches of 64 and single
#      sentences, beam 4); BLEU of a trained model when BLEU_MODEL names its folder (copy it next to the repository);
#   2. the training step (bf16, MFU over the measured bf16 matmul peak; benchmarks/train_step.py, small/base/big).
# Each step has its own time limit, so one that hangs cannot eat the others' share of the lease.
# `multi30k [de-en|en-de]` instead runs a Multi30k GPU figure of RESULTS.md (issue 15), a run of its own (about 10
# minutes; de-en when no direction is given): the multi30k_de_en or multi30k_en_de recipe (bf16-mixed) on the local
# files of $MULTI30K_DIR (default ../shared/data/multi30k; the GPU machine needs `datasets`), then
# benchmarks/multi30k.py (weights and length penalty chosen on validation, test2016).
#
#   benchmarks/gpu.sh                       # on the GPU machine: JSON files in benchmarks/results/*_gpu*.json
#   benchmarks/gpu.sh multi30k [en-de]      # on the GPU machine: benchmarks/results/multi30k_de_en_gpu.json
#                                           #   (multi30k_en_de_gpu.json)
#   benchmarks/gpu.sh --tiny [multi30k ..]  # every command in its tiny mode on CPU (tests/benchmarks/test_decode.py)
#   BENCHMARK_OUTPUT_DIR=/tmp/x benchmarks/gpu.sh --tiny
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${BENCHMARK_OUTPUT_DIR:-benchmarks/results}"
mkdir -p "$OUT"
if [ "${1:-}" = "--tiny" ]; then
    shift
    MODE=(--device cpu --tiny --threads 1); SUFFIX=tiny; LIMIT=600
else
    MODE=(--device cuda); SUFFIX=gpu; LIMIT=240
fi
BLEU=(--bleu-sentences 0)
if [ -n "${BLEU_MODEL:-}" ]; then BLEU=(--bleu-model "$BLEU_MODEL" --bleu-batch-size 64); fi
run() { echo "+ $*"; timeout "$LIMIT" "$@"; }

nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi (CPU run)"

if [ "${1:-}" = "multi30k" ]; then
    case "${2:-de-en}" in
        de-en) SRC=de; TGT=en ;;
        en-de) SRC=en; TGT=de ;;
        *) echo "gpu.sh: multi30k takes a direction, de-en or en-de, got '$2'" >&2; exit 2 ;;
    esac
    NAME="multi30k_${SRC}_${TGT}"  # the recipe, and the report's name
    DATA="${MULTI30K_DIR:-$(cd .. && pwd)/shared/data/multi30k}"
    RUN="$OUT/${NAME}_${SUFFIX}_run"
    FILES="{train: [$DATA/train.de.gz, $DATA/train.en.gz], validation: [$DATA/val.de.gz, $DATA/val.en.gz], test: [$DATA/test_2016_flickr.de.gz, $DATA/test_2016_flickr.en.gz]}"
    FIT=(python -m recipes fit --config "$NAME" --trainer.default_root_dir "$RUN"
         --data.init_args.dataset null --data.init_args.data_files "$FILES")
    SCORE=()
    if [ "$SUFFIX" = tiny ]; then  # a few steps of a shrunk model on CPU: the same commands, seconds
        FIT+=(--trainer.accelerator cpu --trainer.max_steps 4 --trainer.val_check_interval 4
              --data.init_args.validation_sample 16 --data.init_args.vocab_size 300 --model.model_config.d_model 32
              --model.model_config.encoder_ffn_dim 64 --model.model_config.decoder_ffn_dim 64)
        SCORE=(--limit 8 --threads 1 --length-penalties 0.6)
    else  # the issue's budget is 10 minutes: the run stops there at the latest, exporting and averaging as usual
        FIT+=(--trainer.max_time 00:00:09:00)
        LIMIT=900
    fi
    rm -rf "$RUN"
    started=$(date +%s)
    run "${FIT[@]}"
    seconds=$(( $(date +%s) - started ))
    run python -m benchmarks.multi30k "$RUN" --source-lang "$SRC" --target-lang "$TGT" "${SCORE[@]}" \
        --fit-seconds "$seconds" --fit-command "${FIT[*]}" --output "$OUT/${NAME}_${SUFFIX}.json"
    echo "gpu.sh: done, results in $OUT"
    exit 0
fi
run python -m benchmarks.decode "${MODE[@]}" --dtype bf16 --strategies beam4 "${BLEU[@]}" \
    --output "$OUT/decode_${SUFFIX}_bf16.json"
run python -m benchmarks.decode "${MODE[@]}" --dtype bf16 --strategies beam4 --bleu-sentences 0 \
    --engines ct2,"ct2 int8" --ct2-compute-types "$([ "$SUFFIX" = gpu ] && echo float16,int8_float16 || echo float32,int8)" \
    --output "$OUT/decode_${SUFFIX}_float16.json"
run python -m benchmarks.train_step "${MODE[@]}" --dtype bf16 --output "$OUT/train_step_${SUFFIX}.json"
echo "gpu.sh: done, results in $OUT"
