# zhrag API image (CPU). For CUDA, start from a pytorch/pytorch runtime image and drop the torch line.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 ZHRAG_INDEX=/data/index ZHRAG_HOST=0.0.0.0 ZHRAG_PORT=8000
WORKDIR /app

RUN pip install torch --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY app ./app
COPY ingest ./ingest
COPY retrieval ./retrieval
# OpenCV (under RapidOCR) needs these two shared libraries on a slim image.
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 && rm -rf /var/lib/apt/lists/*
RUN pip install ".[pdf,ocr,docx,xlsx]"
COPY data ./data

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/ready').status != 200)"
CMD ["sh", "-c", "zhrag serve --index \"$ZHRAG_INDEX\" --host \"$ZHRAG_HOST\" --port \"$ZHRAG_PORT\""]
