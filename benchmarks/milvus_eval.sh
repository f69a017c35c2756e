#!/usr/bin/env bash
# The statute eval with both retrieval legs in Milvus Lite, beside a FAISS index of the same corpus.
#   INGEST="embedder flags" EVAL="eval flags" benchmarks/milvus_eval.sh CORPUS_DIR FAISS_INDEX OUT_DIR
# CORPUS_DIR holds corpus.jsonl, queries.jsonl and qrels.tsv (../shared/eval/stard_lawref_core); FAISS_INDEX
# is the same corpus ingested with the default store and the same embedder.
# Prints nDCG@10 MRR@10 Recall@10 Recall@100 and the eval's wall time per index, mode and Milvus index type.
set -euo pipefail
corpus=$1 faiss=$2 out=$3
read -r -a ingest_flags <<< "${INGEST:-}"
read -r -a eval_flags <<< "${EVAL:-}"
m() { zhrag eval "$@" --json 2>/dev/null | python -c "import json,sys; r=json.load(sys.stdin); print(' '.join(f'{r[k]:.4f}' for k in ('nDCG@10','MRR@10','Recall@10','Recall@100')), r['queries'])"; }
ev() {
  local index=$1 mode=$2; shift 2
  local start; start=$(date +%s.%N)
  local r; r=$(m --index "$index" --queries "$corpus/queries.jsonl" --qrels "$corpus/qrels.tsv" --mode "$mode" "$@")
  echo "$(basename "$index") $mode $r $(python -c "import time; print(f'{time.time()-$start:.1f} s')")"
}
for mode in bm25 dense hybrid; do ev "$faiss" $mode "${eval_flags[@]}"; done
for kind in flat auto; do
  index=$out/milvus_$kind
  rm -rf "$index" "$index.db"
  zhrag ingest "$corpus/corpus.jsonl" --index "$index" --store milvus --milvus-uri "$index.db" --index-type $kind --quiet "${ingest_flags[@]}"
  for mode in bm25 dense hybrid; do ev "$index" $mode "${eval_flags[@]}"; done
done
