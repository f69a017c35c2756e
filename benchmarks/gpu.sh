#!/usr/bin/env bash
# zhrag's GPU benchmark, for a bare CUDA machine with PyTorch, transformers and sentence-transformers but
# no network. Prepare .gpu/ first with benchmarks/prepare-gpu.sh (wheels, the real Qwen3 tokenizer, the
# 690 statute books, the STARD questions), carry it along, then from the repository root:
#   benchmarks/gpu.sh [OUT_DIR]            (default: $OUT, else ./gpu-bench)
# It builds a randomly initialised model of exactly Qwen3-Embedding-0.6B's shape (hidden 1024, 28 layers,
# 16 heads, 8 KV heads, head dim 128, intermediate 3072, vocab 151,669, tied embeddings) with the real
# tokenizer (post-processor appending <|endoftext|>), then measures in one run, each step a JSON file:
#   ingest.json   plain SentenceTransformer.encode at batch 32 and 256 and zhrag's ingest of the same
#                 statute books (+ the CPU floor with a zero-cost embedder, workers N vs 1)
#   search.json   per-mode search latency on that index (BM25 as the same-run baseline)
#   http.json     /search at concurrency 1/8/32/64, micro-batching on and off
#   fair.json     /search latency alone and while four clients send bulk /v1/embeddings (issue 23's bar)
# Estimated 7-9 minutes on an H100/H200 (not yet run on a card; give the call timeout_s=600). Dry run on a CPU:
#   LAYERS=2 CORPUS=.gpu/lawref/宪法 REQUESTS=16 benchmarks/gpu.sh /tmp/out
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-gpu-bench}}
GPU_DIR=${GPU_DIR:-.gpu}
CORPUS=${CORPUS:-$GPU_DIR/lawref}
LAYERS=${LAYERS:-}
REQUESTS=${REQUESTS:-320}
WORK=${WORK:-/tmp/zhrag-gpu-bench}
mkdir -p "$OUT_DIR" "$WORK"
[ -d "$GPU_DIR/wheels" ] || { echo "gpu.sh: run benchmarks/prepare-gpu.sh first ($GPU_DIR/wheels missing)" >&2; exit 2; }

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
  "$GPU_DIR"/wheels/*.whl
export PYTHONPATH="$WORK/site:$PWD" PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
zhrag() { python3 -m app.cli "$@"; }
step() { echo "== $(date +%T) $*" >&2; }

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"; \
  python3 -c 'import torch, transformers, sentence_transformers as st; print(torch.__version__, transformers.__version__, st.__version__, torch.cuda.is_available())'; \
  nproc; } > "$OUT_DIR/machine.txt"
cat "$OUT_DIR/machine.txt" >&2

MODEL="$WORK/qwen3-embedding-0.6b-random"
step "model: 0.6B shape${LAYERS:+ with $LAYERS layers}, real tokenizer"
rm -rf "$MODEL"
zhrag tiny-model "$MODEL" --shape 0.6b --tokenizer "$GPU_DIR/qwen3-tokenizer" ${LAYERS:+--layers "$LAYERS"} >/dev/null

step "ingest: floor (workers N and 1), zhrag pipeline, plain encode at 32 and 256"
zhrag bench --ingest "$CORPUS" --model "$MODEL" --store numpy --encode-baseline 32,256 \
  --keep-index "$WORK/index" > "$OUT_DIR/ingest.json"
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(json.dumps({k: r.get(k) for k in ("chunks","tokens","floor_seconds","floor_speedup","pipeline","encode","pipeline_vs_encode")}, indent=1))' "$OUT_DIR/ingest.json" >&2

step "search latency per mode"
zhrag bench --index "$WORK/index" --queries "$GPU_DIR/queries.jsonl" --limit 300 > "$OUT_DIR/search.json"

step "/search over HTTP at 1/8/32/64, micro-batching on and off"
zhrag bench --http --index "$WORK/index" --queries "$GPU_DIR/queries.jsonl" --limit 1151 \
  --concurrency 1,8,32,64 --requests "$REQUESTS" --http-mode hybrid > "$OUT_DIR/http.json"
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(json.dumps({v: {c: (s["qps"], s["p50_ms"], s["p99_ms"], s["errors"]) for c, s in r[v].items()} for v in ("on","off")}))' "$OUT_DIR/http.json" >&2
step "/search under bulk /v1/embeddings load (four clients, 64 x 2,000 characters)"
python3 benchmarks/fair_scheduling.py --index "$WORK/index" --searches "${FAIR_SEARCHES:-500}" --out "$OUT_DIR/fair.json" \
  | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["idle"], r["under_bulk_load"], r["p99_ratio"])' >&2
step "done: $OUT_DIR"
