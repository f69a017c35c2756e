#!/usr/bin/env bash
# Prepare .gpu/ (git-ignored) for benchmarks/gpu.sh on a bare CUDA machine without network:
# cp312 manylinux wheels of what its image lacks, jieba repacked small, the real Qwen3 tokenizer files,
# the 690 statute books and the STARD questions. Run it here, from the repository root:
#   benchmarks/prepare-gpu.sh [SHARED_DIR]      (default ../shared)
# then carry .gpu to the GPU machine (well under 64 MiB) and run benchmarks/gpu.sh there.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${1:-../shared}
PY=${PYTHON:-python3}

rm -rf .gpu
mkdir -p .gpu/wheels .gpu/tmp
cp -r "$SHARED/qwen3-tokenizer" .gpu/qwen3-tokenizer
cp -r "$SHARED/corpora/lawref" .gpu/lawref
cp "$SHARED/eval/stard_lawref_core/queries.jsonl" .gpu/queries.jsonl

# What zhrag needs beyond the image's torch, transformers, sentence-transformers, numpy, scipy, httpx,
# click, h11, anyio, pyyaml, packaging, requests, tqdm, charset-normalizer (see the device notes).
WHEELS=(
  fastapi starlette pydantic pydantic-core pydantic-settings python-dotenv annotated-types typing-inspection
  uvicorn bm25s opencc cachetools beautifulsoup4 soupsieve
  langchain-text-splitters langchain-core langchain-protocol langsmith jsonpatch jsonpointer tenacity
  orjson requests-toolbelt uuid-utils zstandard sniffio distro httpx2 httpcore2 websockets opentelemetry-api
  prometheus-client fastapi-offline python-multipart
)
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$p")
done
# Resolve the versions together (as one environment would), then keep only the wheels listed above.
"$PY" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}" \
  -d .gpu/tmp fastapi uvicorn pydantic-settings bm25s opencc langchain-text-splitters cachetools beautifulsoup4 \
  prometheus-client fastapi-offline python-multipart
for name in "${WHEELS[@]}"; do
  file=$(ls .gpu/tmp | grep -i "^${name//-/_}-[0-9]" | head -1 || true)
  [ -n "$file" ] || { echo "prepare-gpu: no wheel for $name" >&2; exit 1; }
  mv ".gpu/tmp/$file" .gpu/wheels/
done

# jieba ships only an sdist (19 MB): build the wheel, drop the Paddle model and the Python 2 pickles.
"$PY" -m pip download -q --no-deps --no-binary=:all: -d .gpu/tmp jieba==0.42.1
"$PY" -m pip wheel -q --no-deps -w .gpu/tmp .gpu/tmp/jieba-0.42.1.tar.gz
"$PY" - <<'PY'
import zipfile
src, dst = ".gpu/tmp/jieba-0.42.1-py3-none-any.whl", ".gpu/wheels/jieba-0.42.1-py3-none-any.whl"
drop = lambda name: name.startswith("jieba/lac_small/") or name.endswith(".p")
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
    for item in zin.infolist():
        if drop(item.filename):
            continue
        data = zin.read(item.filename)
        if item.filename.endswith("/RECORD"):
            data = b"".join(l for l in data.splitlines(keepends=True) if not drop(l.split(b",")[0].decode()))
        zout.writestr(item, data)
PY
rm -rf .gpu/tmp
du -sh .gpu .gpu/wheels
