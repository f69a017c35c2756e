"""The ``zhrag`` command line: ingest, search, serve, eval, info, tiny-model."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from app import __version__
from app.settings import Settings
from app.usecases.limits import MAX_TOP_K
from ingest.chunkers.base import CHUNKERS
from ingest.lifecycle import COMMAND
from retrieval.dialogue import DIALOGUE_MODES
from retrieval.embedders import EMBEDDER_BACKENDS
from retrieval.errors import UserError
from retrieval.prompts import DOMAINS
from retrieval.searcher import BM25, DENSE, EXPAND_CHOICES, HYBRID, SEARCH_MODES
from retrieval.stores import MILVUS_INDEX_TYPES, STORE_BACKENDS
from retrieval.stores.faiss import FAISS_INDEX_TYPES

__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_ERROR", "EXIT_USAGE", "EXIT_PARTIAL"]

METRIC_KEYS = ("nDCG@10", "MRR@10", "Recall@10", "Recall@100")
EXIT_OK = 0
EXIT_ERROR = 1
"""A fault: the command printed its traceback."""
EXIT_USAGE = 2
"""What the user can fix (a bad flag, file or value; a refused request): one line on stderr."""
EXIT_PARTIAL = 3
"""The command did its work, but something it was given is not in the result, each named on stderr: ``ingest``
skipped a file, ``citations`` found a citation that is not in the index, ``delete`` was given an id the index
does not hold."""

log = logging.getLogger("zhrag")
INDEX_HELP = "Index directory (default: ZHRAG_INDEX, else ./zhrag_index)"


class CliError(UserError):
    """A user-facing error: printed without a traceback, exit code ``EXIT_USAGE``."""


def _settings(args: argparse.Namespace, **fields: Any) -> Settings:
    """Environment settings overridden by the CLI flags that were given."""
    overrides = {k: v for k, v in fields.items() if v is not None}
    if getattr(args, "index", None):
        overrides["index"] = Path(args.index)
    settings = Settings().updated(**overrides)
    if getattr(args, "index", None) and "root" not in overrides:
        settings = settings.model_copy(update={"root": None})  # --index names the one base, whatever ZHRAG_ROOT says
    return settings


def _store_flags(p: argparse.ArgumentParser) -> None:
    """The options :func:`_store_options` reads (``ingest`` of a new index, ``migrate``)."""
    g = p.add_argument_group("vector store")
    g.add_argument(
        "--index-type",
        choices=list(FAISS_INDEX_TYPES),
        default=None,
        help="FAISS auto = exact below 200k chunks, HNSW above; Milvus (auto, flat, hnsw) auto = AUTOINDEX, "
        "flat = exact",
    )
    g.add_argument("--milvus-uri", help="Milvus server (http://…) or Milvus Lite file (ZHRAG_MILVUS_URI)")
    g.add_argument("--milvus-collection", help="Collection name (default: from the index directory)")


def _embedder_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("embedding model")
    g.add_argument("--model", help="Hub id, modelscope:ORG/NAME or local dir (default Qwen/Qwen3-Embedding-0.6B)")
    g.add_argument("--embedder", choices=EMBEDDER_BACKENDS, help="Local model or remote server")
    g.add_argument(
        "--domain",
        choices=DOMAINS,
        help="What the documents are about: picks the query instruction; a new index records it (query synonyms "
        "and multi-turn turn weights follow it)",
    )
    g.add_argument("--instruction", help="Query instruction text (overrides --domain)")
    g.add_argument("--dim", type=int, help="Matryoshka output dimension (truncate + re-normalise)")
    g.add_argument("--max-seq-length", type=int, help="Token cap for the model input (default 1024)")
    g.add_argument("--batch-size", type=int, help="Encode batch size")
    g.add_argument("--device", help="cuda, cpu, ... (auto)")
    g.add_argument("--embed-base-url", help="OpenAI-compatible server, e.g. http://localhost:8080/v1")
    g.add_argument("--embed-api-key", help="API key for the server")
    g.add_argument("--embed-query-model", help="Model name for queries on the server")
    g.add_argument("--embed-query-prefix", help="Text before queries (default: the Qwen3 instruction prompt)")
    g.add_argument("--embed-document-prefix", help="Text before documents")
    g.add_argument("--embed-cache", type=Path, help="SQLite embedding cache file")


def _embedder_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "model": args.model,
        "embedder": args.embedder,
        "domain": args.domain,
        "instruction": args.instruction,
        "dim": args.dim,
        "max_seq_length": args.max_seq_length,
        "batch_size": args.batch_size,
        "device": args.device,
        "embed_base_url": args.embed_base_url,
        "embed_api_key": args.embed_api_key,
        "embed_query_model": args.embed_query_model,
        "embed_query_prefix": args.embed_query_prefix,
        "embed_document_prefix": args.embed_document_prefix,
        "embed_cache": args.embed_cache,
        "embed_model": args.model if args.embedder == "openai" else None,
    }


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(prog="zhrag", description="Chinese RAG retrieval: ingest, search, serve, eval.")
    parser.add_argument("--version", action="version", version=f"zhrag {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="Debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    _ingest_and_search_parsers(sub)
    _serve_and_eval_parsers(sub)
    _bench_parsers(sub)
    _index_tools_parsers(sub)
    return parser


def _ingest_and_search_parsers(sub: Any) -> None:
    """The ``ingest`` and ``search`` commands."""
    p = sub.add_parser("ingest", help="Chunk, embed and index documents (txt, md, html, pdf, docx, jsonl)")
    p.add_argument("paths", nargs="+", type=Path, help="Files or directories (recursive)")
    p.add_argument(
        "--index", type=Path, help="Index directory, created or updated (default: ZHRAG_INDEX, else ./zhrag_index)"
    )
    p.add_argument("--chunk-size", type=int, default=None, help="Max tokens per chunk (default 512)")
    p.add_argument("--chunk-overlap", type=int, default=None, help="Token overlap of generic chunks (default 64)")
    p.add_argument("--chunker", choices=CHUNKERS, default="auto")
    p.add_argument("--store", choices=STORE_BACKENDS, default=None, help="Vector store of a new index (ZHRAG_STORE)")
    p.add_argument("--workers", type=int, help="Processes for loading, chunking and tokenising (default: the cores)")
    p.add_argument("--devices", help="One model replica per device, e.g. cuda:0,cuda:1")
    p.add_argument("--max-batch-tokens", type=int, help="Padded tokens per embedding batch (default by device)")
    p.add_argument("--user-dict", type=Path, action="append", default=[], help="Extra jieba dictionary for BM25")
    p.add_argument("--prune", action="store_true", help="Remove indexed documents not found under PATH... any more")
    p.add_argument("--json", action="store_true", help="Print the summary as one JSON object on stdout")
    p.add_argument("--quiet", action="store_true", help="No progress bar")
    _store_flags(p)
    _embedder_flags(p)

    p = sub.add_parser("search", help="Search an index")
    p.add_argument("query", nargs="?", help="The question (or use --messages)")
    p.add_argument("--index", type=Path, help=INDEX_HELP)
    p.add_argument("--messages", type=Path, help="JSON file with an OpenAI-format messages list (multi-turn)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--mode", choices=SEARCH_MODES, default=HYBRID)
    p.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE", help="Metadata filter (repeatable)")
    p.add_argument("--rerank", action="store_true", help="Rerank with --reranker / ZHRAG_RERANKER")
    p.add_argument("--reranker", help="Reranker model id or directory")
    p.add_argument("--score-threshold", type=float)
    p.add_argument("--expand", choices=EXPAND_CHOICES, default="none")
    p.add_argument("--group-by", choices=["doc_id"])
    p.add_argument("--dialogue-mode", choices=DIALOGUE_MODES, default="auto")
    p.add_argument("--model", help="Must match the index's model (it is read from the index)")
    p.add_argument("--embed-base-url", help="Override the embedding server URL recorded in the index")
    p.add_argument("--embed-cache", type=Path)
    p.add_argument("--json", action="store_true", help="Print exactly the JSON body POST /search returns")


def _serve_and_eval_parsers(sub: Any) -> None:
    """The ``serve`` and ``eval`` commands."""
    p = sub.add_parser("serve", help="Serve the HTTP API")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--index", type=Path, help=INDEX_HELP + " (one knowledge base)")
    where.add_argument("--root", type=Path, help="Serve every index under DIR, each a knowledge base (ZHRAG_ROOT)")
    p.add_argument("--default-kb", help="The base the top-level routes use (ZHRAG_DEFAULT_KB; default: the only one)")
    p.add_argument("--keys-file", type=Path, help="Keys with roles per knowledge base (ZHRAG_KEYS_FILE, TOML or JSON)")
    p.add_argument(
        "--host",
        default=None,
        help="Bind address (default 127.0.0.1; any other serves reads only until keys are configured)",
    )
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--reranker", help="Reranker model id or directory")
    p.add_argument("--api-key", help="A Bearer key every route but /health and /ready requires (see ZHRAG_API_KEYS)")
    p.add_argument("--no-model", action="store_true", help="Serve BM25 only, without loading the model")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    p.add_argument("--log-format", choices=["text", "json"], help="Log lines as text or JSON (ZHRAG_LOG_FORMAT)")

    p = sub.add_parser("eval", help="Score an index on queries or dialogues with qrels")
    p.add_argument("--index", type=Path, help=INDEX_HELP)
    p.add_argument("--qrels", required=True, type=Path, help="BEIR qrels TSV")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--queries", type=Path, help="BEIR queries JSONL")
    src.add_argument("--dialogues", type=Path, help="Dialogues JSONL ({id, messages})")
    p.add_argument("--dialogue-mode", choices=DIALOGUE_MODES, default="auto")
    p.add_argument("--mode", choices=SEARCH_MODES, default=HYBRID)
    p.add_argument("--rerank", action="store_true")
    p.add_argument("--reranker", help="Reranker model id or directory")
    p.add_argument("--doc-id", default="{doc_id}", help='Qrels id template over chunk metadata, e.g. "{law} {article}"')
    p.add_argument("--weight-dense", type=float)
    p.add_argument("--weight-bm25", type=float)
    p.add_argument("--limit", type=int, help="Evaluate only the first N queries")
    p.add_argument(
        "--rewrite",
        action="store_true",
        help="Dialogues also go through the LLM rewriter (ZHRAG_REWRITE_BASE_URL/_MODEL); default: LLM-free",
    )
    p.add_argument("--rewrite-cache", type=Path, help="SQLite cache of rewrites (ZHRAG_REWRITE_CACHE): reruns are free")
    p.add_argument(
        "--rewrite-weight",
        type=float,
        help="Fusion weight of the rewritten question (ZHRAG_REWRITE_WEIGHT, default 1): compare 1, 2, 4 on your data",
    )
    p.add_argument("--embed-base-url", help="Override the embedding server URL recorded in the index")
    p.add_argument("--embed-cache", type=Path)
    p.add_argument("--per-query", type=Path, help="Write per-query metrics and top-10 ids as JSONL")
    p.add_argument("--json", action="store_true", help="Print metrics as one JSON object")
    p.add_argument("--markdown", metavar="LABEL", help="Print one Markdown table row labelled LABEL (README tables)")


def _bench_parsers(sub: Any) -> None:
    """The ``bench`` commands."""
    p = sub.add_parser(
        "bench",
        help="Performance suite (JSON): query latency per mode, --ingest throughput, --http load, --ann layouts",
    )
    p.add_argument("--index", type=Path, help="Index to time searches on (default: ZHRAG_INDEX, else ./zhrag_index)")
    p.add_argument("--queries", type=Path, help="BEIR queries JSONL or a text file with one question per line")
    p.add_argument("--limit", type=int, default=200, help="At most this many queries")
    p.add_argument("--modes", default=",".join((BM25, DENSE, HYBRID)), help="Comma-separated modes")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--embed-cache", type=Path)
    p.add_argument(
        "--dialogues", type=Path, help="Time the multi-turn query builder on these dialogues (JSONL) instead"
    )
    g = p.add_argument_group("ingest throughput (--ingest PATH...) and write cost (--update N)")
    g.add_argument("--ingest", type=Path, nargs="+", metavar="PATH", help="Ingest these into throwaway indexes")
    g.add_argument(
        "--update",
        type=int,
        metavar="N",
        help="Build an N-chunk synthetic index (zero-cost embedder, --model's tokenizer), then time adding, "
        "replacing and deleting one document, and searches after --writes small writes and their merges",
    )
    g.add_argument("--writes", type=int, default=100, help="Small writes of --update (default 100)")
    g.add_argument("--model", help="Embedding model of the ingest runs (default Qwen/Qwen3-Embedding-0.6B)")
    g.add_argument("--workers", type=int, help="Workers of the floor and model runs (default: the cores)")
    g.add_argument("--devices", help="Devices of the model run, e.g. cuda:0,cuda:1")
    g.add_argument("--max-batch-tokens", type=int, help="Batch budget of the model run")
    g.add_argument("--floor-only", action="store_true", help="Only the zero-cost-embedder runs (no model time)")
    g.add_argument(
        "--encode-baseline", help="Also time plain SentenceTransformer.encode at these batch sizes, e.g. 32,256"
    )
    g.add_argument("--store", choices=["faiss", "numpy"], default="faiss", help="Vector store of the ingest runs")
    g.add_argument("--keep-index", type=Path, help="Keep the model run's index here (e.g. to bench searching it)")
    g = p.add_argument_group("HTTP load (--http)")
    g.add_argument("--http", action="store_true", help="Serve --index and load /search, micro-batching on and off")
    g.add_argument("--concurrency", default="1,8,32,64", help="Requests in flight per level")
    g.add_argument("--requests", type=int, default=256, help="Requests per level (at least 4 x concurrency)")
    g.add_argument("--http-mode", choices=SEARCH_MODES, default=HYBRID, help="/search mode")
    g.add_argument("--microbatch", choices=["both", "on", "off"], default="both", help="Which server variants")
    g = p.add_argument_group("vector index layouts (--ann N)")
    g.add_argument("--ann", type=int, metavar="N", help="Compare FAISS flat, HNSW and IVF-PQ on N synthetic vectors")
    g.add_argument("--dim", type=int, default=1024, help="Their dimension")
    g.add_argument("--ann-data", choices=["mixture", "lowrank"], default="mixture", help="Synthetic distribution")
    g.add_argument("--ann-queries", type=int, default=500)
    g.add_argument("--ef-search", type=int, help="HNSW search beam (default 128)")
    g.add_argument("--nprobe", type=int, help="IVF lists per query (default 32)")


def _index_tools_parsers(sub: Any) -> None:
    """The ``kb``, ``info``, ``migrate``, ``citations``, ``list``, ``delete``, ``tiny-model`` commands."""
    p = sub.add_parser("kb", help="List, create or delete the knowledge bases under a root")
    p.add_argument("action", choices=["list", "create", "delete"])
    p.add_argument("name", nargs="?", help="The base to create or delete")
    p.add_argument("--root", type=Path, help="The directory of knowledge bases (ZHRAG_ROOT)")
    p.add_argument("--model", help="Embedding model of a new base (default ZHRAG_MODEL)")
    p.add_argument("--domain", choices=DOMAINS, help="Domain of a new base (default ZHRAG_DOMAIN)")
    p.add_argument("--yes", action="store_true", help="Confirm deleting a base and every document in it")

    p = sub.add_parser("info", help="Show an index's manifest")
    p.add_argument("--index", type=Path, help=INDEX_HELP)

    p = sub.add_parser("migrate", help="Move an index's vectors to another store without re-embedding them")
    p.add_argument("--index", type=Path, help=INDEX_HELP)
    p.add_argument("--to", dest="store", choices=STORE_BACKENDS, required=True)
    _store_flags(p)

    p = sub.add_parser("citations", help="Check the statute citations in a text against an index")
    p.add_argument("text", help="The text (e.g. an LLM's answer); - reads standard input")
    p.add_argument("--index", type=Path, help=INDEX_HELP)
    p.add_argument("--json", action="store_true", help="The body POST /citations/verify returns")

    p = sub.add_parser("list", help="List an index's documents with their chunk counts")
    p.add_argument("--index", type=Path, help=INDEX_HELP)
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--json", action="store_true", help="One JSON object (total, documents)")

    p = sub.add_parser("optimize", help="Merge an index's small segments now (a server merges between writes)")
    p.add_argument("--index", type=Path, help=INDEX_HELP)

    p = sub.add_parser("delete", help="Delete documents from an index (publishes a new version)")
    p.add_argument("doc_ids", nargs="+", metavar="DOC_ID")
    p.add_argument("--index", type=Path, help=INDEX_HELP)

    p = sub.add_parser("tiny-model", help="Write a tiny random Qwen3 embedding model (offline smoke tests)")
    p.add_argument("output", type=Path)
    p.add_argument("--train-text", type=Path, action="append", default=[], help="Text files for its tokenizer")
    p.add_argument("--reranker", action="store_true", help="Write a tiny Qwen3-Reranker-shaped model instead")
    p.add_argument(
        "--shape", choices=["tiny", "0.6b"], default="tiny", help="Architecture (0.6b: Qwen3-Embedding-0.6B's)"
    )
    p.add_argument("--layers", type=int, help="Override the shape's layer count")
    p.add_argument(
        "--tokenizer", type=Path, help="Tokenizer dir (e.g. Qwen3's vocab.json + merges.txt) instead of training one"
    )


def _filters(pairs: list[str]) -> dict[str, Any]:
    filters: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--filter expects KEY=VALUE, got {pair!r}")
        filters.setdefault(key, []).append(value)
    return {k: v[0] if len(v) == 1 else v for k, v in filters.items()}


def cmd_ingest(args: argparse.Namespace) -> int:
    """``zhrag ingest``."""
    from app.usecases.ingest import IngestRequest, ingest_paths
    from ingest.chunkers import ChunkSettings
    from retrieval.index import current_version, reserve_writer

    settings = _settings(
        args,
        **_embedder_settings(args),
        user_dicts=args.user_dict or None,
        workers=args.workers,
        devices=args.devices,
        max_batch_tokens=args.max_batch_tokens,
    )
    request = IngestRequest(
        paths=args.paths,
        model_given=args.model is not None,
        domain=args.domain,
        chunk=ChunkSettings(
            chunk_size=args.chunk_size or ChunkSettings.chunk_size,
            chunk_overlap=args.chunk_overlap if args.chunk_overlap is not None else ChunkSettings.chunk_overlap,
            chunker=args.chunker,
        ),
        store=_store_options(args, settings),
        prune=args.prune,
        progress=not (args.quiet or args.json),
    )
    # The lock first: a second ingest into the same index is refused at once, not after the model loads.
    with reserve_writer(settings.index):
        before = current_version(settings.index)
        try:
            summary = ingest_paths(settings, request, cancel=COMMAND.cancel)
        except KeyboardInterrupt:
            after = current_version(settings.index)
            if after == before:
                raise
            # Stopped after the swap (while the writer tidied up): the new version is whole and live.
            print(f"zhrag: interrupted after version {after} was published; it is live and complete", file=sys.stderr)
            return EXIT_ERROR
        code = EXIT_PARTIAL if summary.skipped else EXIT_OK
        COMMAND.work_done(code)
        _report_ingest(summary, args.json)
        _merge_after_ingest(settings, quiet=args.json or args.quiet)
        return code


def _report_ingest(summary: Any, as_json: bool) -> None:
    """The summary line (or the JSON body) on stdout/stderr, then every skipped file and warning."""
    if as_json:
        print(json.dumps(summary.to_dict(), ensure_ascii=False))
    else:
        print(
            f"indexed {_count(summary.documents_indexed, 'document')} ({summary.documents_unchanged} unchanged, "
            f"{summary.documents_removed} removed) into "
            f"{_count(summary.chunks, 'chunk')}, {_count(summary.tokens, 'token')}, in {summary.seconds}s "
            f"({summary.chunks_per_second} chunks/s, {summary.tokens_per_second:.0f} tokens/s; embedding "
            f"{summary.embed_tokens_per_second:.0f} tokens/s, {summary.padding_ratio:.1%} padding; "
            f"{_count(summary.workers, 'worker')}); index {summary.index} now holds "
            f"{_count(summary.total_chunks, 'chunk')} of {_count(summary.total_documents, 'document')} "
            f"[{summary.version}]",
            file=sys.stderr,
        )
        if summary.ocr_pages:
            print(
                f"OCR: {_count(summary.ocr_pages, 'page')}, mean confidence {summary.ocr_confidence}", file=sys.stderr
            )
    for item in summary.skipped:
        print(f"skipped {item['path']}: {item['reason']}", file=sys.stderr)
    for item in summary.warnings:
        print(f"warning: {item['reason']}", file=sys.stderr)


def _merge_after_ingest(settings: Settings, quiet: bool) -> None:
    """Merge small segments as the tiered policy says, once the ingest has published (an interrupt here
    leaves the index as ingested)."""
    from retrieval.index import IndexLockedError, merge_segments

    try:
        merged = merge_segments(settings.index, connection=settings.milvus.connection)
    except (KeyboardInterrupt, IndexLockedError):
        print("zhrag: segments not merged; the index is as ingested", file=sys.stderr)
        return
    if merged and not quiet:
        print(f"merged small segments ({_count(len(merged), 'merge')}); version {merged[-1]}", file=sys.stderr)


def cmd_optimize(args: argparse.Namespace) -> int:
    """``zhrag optimize``: merge an index's segments now, as the tiered merge policy says."""
    from retrieval.index import merge_segments, read_manifest

    settings = _settings(args)
    before = len(read_manifest(settings.index).get("segments", []))
    merged = merge_segments(settings.index, connection=settings.milvus.connection)
    after = len(read_manifest(settings.index).get("segments", []))
    if merged:
        done = f"merged {before} segments into {after} ({_count(len(merged), 'merge')}); version {merged[-1]}"
        print(done, file=sys.stderr)
    else:
        print(f"nothing to merge; the index keeps its {_count(after, 'segment')}", file=sys.stderr)
    return EXIT_OK


def milvus_collection(index: Path) -> str:
    """The default Milvus collection of an index: its directory name (ASCII) and a hash of its full path,
    so two indexes never share a collection, even on one server."""
    path = str(index.resolve())
    name = "".join(ch if ch.isascii() and ch.isalnum() else "_" for ch in index.resolve().name)[:40]
    return f"zhrag_{name}_{hashlib.sha1(path.encode()).hexdigest()[:8]}"


def _store_options(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    store = args.store or settings.ingest.store
    if store == "faiss":
        return {"backend": "faiss", "kind": args.index_type or "auto"}
    if store != "milvus":
        if args.index_type:
            raise CliError(f"--index-type applies to the faiss and milvus stores, not {store}")
        return {"backend": store}
    if args.index_type not in (None, *MILVUS_INDEX_TYPES):
        raise CliError(
            f"--index-type {args.index_type} is not offered for Milvus; choose one of {list(MILVUS_INDEX_TYPES)}"
        )
    uri = args.milvus_uri or settings.milvus.uri or str((settings.index / "milvus.db").resolve())
    collection = args.milvus_collection or settings.milvus.collection or milvus_collection(settings.index)
    kind = args.index_type or "auto"
    return {"backend": "milvus", "uri": uri, "collection": collection, "kind": kind}


def _read_messages(path: Path) -> list[dict[str, str]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CliError(f"{path}: cannot read messages: {exc}") from exc
    messages = data.get("messages") if isinstance(data, dict) else data
    if not isinstance(messages, list):
        raise CliError(f'{path}: expected a JSON list of messages or {{"messages": [...]}}')
    return messages


def cmd_search(args: argparse.Namespace) -> int:
    """``zhrag search``."""
    from app.api.schemas import to_search_response
    from app.services import build_services
    from app.usecases.search import SearchQuery, search
    from retrieval.embedders.sentence_transformers import model_reference
    from retrieval.searcher import SearchOptions

    settings = _settings(args, reranker=args.reranker, embed_base_url=args.embed_base_url, embed_cache=args.embed_cache)
    options = SearchOptions(
        top_k=args.top_k,
        mode=args.mode,
        filters=_filters(args.filter) or None,
        rerank=args.rerank,
        score_threshold=args.score_threshold,
        expand=args.expand,
        group_by=args.group_by,
    )
    messages = _read_messages(args.messages) if args.messages else []
    request = SearchQuery(args.query, messages, options=options, dialogue_mode=args.dialogue_mode)
    services = build_services(
        settings, load_model=args.mode != BM25, model=model_reference(args.model) if args.model else None
    )
    answer = search(services, request)
    query = answer.question
    response = to_search_response(answer)
    if args.json:
        print(response.model_dump_json())
        return EXIT_OK
    print(f"# {query}  ({response.mode}, {response.took_ms} ms; queries: {' | '.join(response.queries)})")
    if response.bm25_query:
        print("# bm25 over the turns: " + " | ".join(f"{p.weight:g}×{p.text}" for p in response.bm25_query))
    for rank, result in enumerate(response.results, start=1):
        label = " ".join(x for x in (result.metadata.get("law"), result.metadata.get("article")) if x) or result.title
        print(f"\n[{rank}] {result.score:.4f}  {label}  ({result.source}{_pages_label(result.metadata)})")
        print(result.text)
    if not response.results:
        print("(no results)")
    return EXIT_OK


def _pages_label(metadata: dict[str, Any]) -> str:
    """``, 第3页`` / ``, 第3–4页`` (and ``, OCR``) for a chunk of a paged source; empty otherwise."""
    pages = metadata.get("pages")
    if not isinstance(pages, list) or len(pages) != 2:
        return ""
    span = f"{pages[0]}" if pages[0] == pages[1] else f"{pages[0]}–{pages[1]}"
    return f", 第{span}页" + (", OCR" if metadata.get("ocr") else "")


def cmd_serve(args: argparse.Namespace) -> int:
    """``zhrag serve``."""
    import uvicorn

    from app.api import create_app
    from app.api.observability import configure_logging
    from retrieval.index import read_manifest

    settings = _settings(
        args,
        host=args.host,
        port=args.port,
        reranker=args.reranker,
        api_key=args.api_key,
        load_model=False if args.no_model else None,
        root=args.root,
        default_kb=args.default_kb,
        keys_file=args.keys_file,
    )
    if settings.root is None:
        read_manifest(settings.index)  # fail fast with a clear message
    elif not settings.root.is_dir():
        raise CliError(f"{settings.root}: no such directory (--root holds one index per knowledge base)")
    configure_logging(args.log_level, args.log_format or settings.serve.log_format)
    uvicorn.run(
        create_app(settings),
        host=settings.serve.host,
        port=settings.serve.port,
        log_level=args.log_level,
        log_config=None,  # keep ours: request ids on every line
        access_log=args.log_level in ("debug", "info"),
    )
    return EXIT_OK


def cmd_kb(args: argparse.Namespace) -> int:
    """``zhrag kb list|create|delete``."""
    from app.bases import index_dirs

    settings = _settings(args, root=args.root, model=args.model, domain=args.domain)
    if settings.root is None:
        raise CliError("name the directory of knowledge bases with --root (or ZHRAG_ROOT)")
    if args.action == "list":
        return _list_bases(settings, index_dirs(settings.root))
    if not args.name:
        raise CliError(f"zhrag kb {args.action} needs the base's name")
    if args.action == "create":
        return _create_base(settings, args.name)
    return _delete_base(index_dirs(settings.root), args.name, args.yes)


def _list_bases(settings: Settings, bases: dict[str, Path]) -> int:
    from app.services import index_domain
    from retrieval.index import read_manifest

    for name, path in bases.items():
        manifest = read_manifest(path)
        counts = manifest.get("counts", {})
        model, domain = manifest["embedder"]["model"], index_domain(settings, manifest) or "-"
        print(f"{name}\t{counts.get('documents', 0)} documents\t{counts.get('chunks', 0)} chunks\t{model}\t{domain}")
    print(f"{_count(len(bases), 'knowledge base')}", file=sys.stderr)
    return EXIT_OK


def _create_base(settings: Settings, name: str) -> int:
    from app.access import valid_base_name
    from app.services import build_analyzer, build_embedder
    from ingest.pipeline import create_index
    from retrieval.index import reserve_writer

    if not valid_base_name(name):
        raise CliError(f"{name!r} is not a knowledge base name (letters, digits, CJK, _ . -; no '/' or '..')")
    path = settings.root / name  # type: ignore[operator]
    if path.exists():
        raise CliError(f"{path} already exists")
    with reserve_writer(path):
        embedder, analyzer = build_embedder(settings), build_analyzer(settings)
        version = create_index(
            path, embedder, analyzer, domain=settings.embedding.domain, connection=settings.milvus.connection
        )
    print(
        f"created knowledge base {name} ({settings.embedding.model}, {settings.embedding.domain}) at {path} [{version}]",
        file=sys.stderr,
    )
    return EXIT_OK


def _delete_base(bases: dict[str, Path], name: str, confirmed: bool) -> int:
    import shutil

    from retrieval.index import reserve_writer

    if name not in bases:
        raise CliError(f"no knowledge base {name!r} (zhrag kb list)")
    if not confirmed:
        raise CliError(f"deleting {name} removes {bases[name]} and every document in it: add --yes")
    with reserve_writer(bases[name]):  # no write is half-way
        shutil.rmtree(bases[name])
    print(f"deleted knowledge base {name} ({bases[name]})", file=sys.stderr)
    return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    """``zhrag eval``."""
    from app.evaluate import EvalConfig, load_dialogues, run_eval
    from app.services import build_services
    from retrieval.metrics import load_qrels, load_queries

    load_qrels(args.qrels)  # a bad file is named before the model spends seconds loading
    if args.queries:
        load_queries(args.queries)
    else:
        load_dialogues(args.dialogues)

    settings = _settings(
        args,
        reranker=args.reranker,
        embed_base_url=args.embed_base_url,
        embed_cache=args.embed_cache,
        weight_dense=args.weight_dense,
        weight_bm25=args.weight_bm25,
        rewrite_cache=args.rewrite_cache,
        rewrite_weight=args.rewrite_weight,
    )
    services = build_services(settings, load_model=args.mode != BM25)
    config = EvalConfig(
        qrels=args.qrels,
        queries=args.queries,
        dialogues=args.dialogues,
        dialogue_mode=args.dialogue_mode,
        mode=args.mode,
        rerank=args.rerank,
        doc_id=args.doc_id,
        limit=args.limit,
        rewrite=args.rewrite,
    )
    result = run_eval(services, config, progress=not args.json)
    per_query = result.pop("per_query")
    if args.per_query:
        with open(args.per_query, "w", encoding="utf-8") as fh:
            for row in per_query:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    elif args.markdown:
        mode = result["mode"] + (" + rerank" if result["rerank"] else "")
        if result["dialogue_mode"]:
            mode += f", dialogue {result['dialogue_mode']}"
        cells = [args.markdown, mode, *(f"{result[m]:.3f}" for m in METRIC_KEYS), str(result["queries"])]
        print("| " + " | ".join(cells) + " |")
    else:
        print(" ".join(f"{k}={result[k]}" for k in (*METRIC_KEYS, "queries")))
    return EXIT_OK


def _bench_queries(path: Path | None) -> list[str]:
    from retrieval.metrics import load_queries

    if path is None:
        path = Path(__file__).resolve().parents[1] / "data" / "questions.txt"
    if path.suffix == ".jsonl":
        return list(load_queries(path).values())
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise CliError(f"{flag} expects comma-separated integers, got {text!r}") from exc
    if not values or min(values) < 1:
        raise CliError(f"{flag} expects positive integers, got {text!r}")
    return values


def _search_modes(text: str, flag: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in modes if m not in SEARCH_MODES]
    if not modes or unknown:
        raise CliError(f"{flag} expects comma-separated modes of {', '.join(SEARCH_MODES)}, got {text!r}")
    return modes


def _bench_dialogues(args: argparse.Namespace) -> dict[str, Any]:
    """Milliseconds the LLM-free query builder takes per conversation (auto mode), per search mode."""
    import time

    from app.bench.machine import machine_info, percentile
    from app.evaluate import load_dialogues
    from app.services import build_services

    services = build_services(_settings(args, rewrite_base_url=None), load_model=False)
    dialogues = list(load_dialogues(args.dialogues).values())[: args.limit]
    if not dialogues:
        raise CliError(f"no dialogues in {args.dialogues}")
    builder = services.dialogue
    builder.rewriter = None  # the default, LLM-free builder
    result: dict[str, Any] = {"dialogues": len(dialogues), "dialogue_mode": "auto"}
    for mode in (BM25, HYBRID):
        # Warm-up: jieba's dictionary and TF-IDF's tables (loaded on the first older turn met), not the
        # analyzer's block cache, which would time a second pass over the same turns.
        builder.build(dialogues[0], "auto", mode)
        builder.keywords(dialogues[0][-1]["content"], 1)
        times = []
        for messages in dialogues:
            start = time.perf_counter()
            builder.build(messages, "auto", mode)
            times.append((time.perf_counter() - start) * 1000)
        result[mode] = {
            "mean_ms": round(sum(times) / len(times), 3),
            "p50_ms": round(percentile(times, 0.5), 3),
            "p99_ms": round(percentile(times, 0.99), 3),
        }
    services.close()
    result["machine"] = machine_info()
    return result


def cmd_bench(args: argparse.Namespace) -> int:
    """``zhrag bench``."""
    if args.ann:
        result = _bench_ann(args)
    elif args.update:
        result = _bench_update(args)
    elif args.ingest:
        result = _bench_ingest(args)
    elif args.dialogues:
        result = _bench_dialogues(args)
    else:
        queries = _bench_queries(args.queries)[: args.limit]
        if not queries:
            raise CliError("no queries to benchmark")
        result = _bench_http(args, queries) if args.http else _bench_search(args, queries)
    print(json.dumps(result, ensure_ascii=False))
    return EXIT_OK


def _bench_search(args: argparse.Namespace, queries: list[str]) -> dict[str, Any]:
    from app.bench import run_bench
    from app.services import build_services

    modes = _search_modes(args.modes, "--modes")
    settings = _settings(args, embed_cache=args.embed_cache)
    services = build_services(settings, load_model=any(m != BM25 for m in modes))
    return run_bench(services, queries, modes, args.top_k)


def _bench_http(args: argparse.Namespace, queries: list[str]) -> dict[str, Any]:
    from app.bench.http import run_http_bench
    from retrieval.index import read_manifest

    index = _settings(args).index
    read_manifest(index)  # fail fast with a clear message
    variants = {"both": (True, False), "on": (True,), "off": (False,)}[args.microbatch]
    levels = _ints(args.concurrency, "--concurrency")
    return run_http_bench(index, queries, levels, args.requests, args.http_mode, args.top_k, variants)


def _bench_ingest(args: argparse.Namespace) -> dict[str, Any]:
    from app.bench.ingest import run_ingest_bench
    from app.services import build_analyzer, build_embedder
    from ingest.stages import default_workers

    settings = _settings(args, model=args.model, devices=args.devices, max_batch_tokens=args.max_batch_tokens)
    missing = [str(p) for p in args.ingest if not p.exists()]
    if missing:
        raise CliError(f"no such file or directory: {', '.join(missing)}")
    return run_ingest_bench(
        args.ingest,
        build_embedder(settings),
        build_analyzer(settings),
        workers=args.workers or settings.ingest.workers or default_workers(),
        devices=settings.ingest.devices or None,
        max_batch_tokens=settings.ingest.max_batch_tokens,
        with_model=not args.floor_only,
        encode_batches=_ints(args.encode_baseline, "--encode-baseline") if args.encode_baseline else (),
        store={"backend": args.store},
        keep_index=args.keep_index,
    )


def _bench_update(args: argparse.Namespace) -> dict[str, Any]:
    from app.bench.update import run_update_bench
    from app.services import build_analyzer, build_embedder
    from ingest.stages import default_workers

    settings = _settings(args, model=args.model)
    if args.update < 1:
        raise CliError("--update needs a positive number of chunks")
    workers = args.workers or settings.ingest.workers or default_workers()
    embedder, analyzer = build_embedder(settings), build_analyzer(settings)
    return run_update_bench(args.update, embedder, analyzer, workers=workers, writes=args.writes)


def _bench_ann(args: argparse.Namespace) -> dict[str, Any]:
    import dataclasses

    from app.bench.ann import run_ann_bench
    from retrieval.stores.faiss import AnnParams

    overrides = {k: v for k, v in (("ef_search", args.ef_search), ("nprobe", args.nprobe)) if v is not None}
    params = dataclasses.replace(AnnParams(), **overrides)
    return run_ann_bench(args.ann, args.dim, args.ann_queries, params=params, data=args.ann_data)


def cmd_info(args: argparse.Namespace) -> int:
    """``zhrag info``."""
    from retrieval.index import read_manifest

    print(json.dumps(read_manifest(_settings(args).index), ensure_ascii=False, indent=2))
    return EXIT_OK


def cmd_migrate(args: argparse.Namespace) -> int:
    """``zhrag migrate``."""
    from tqdm.auto import tqdm

    from retrieval.index import migrate_store, read_manifest

    settings = _settings(args)
    store = _store_options(args, settings)
    manifest = read_manifest(settings.index)
    before, total = manifest["store"], manifest.get("counts", {}).get("chunks")
    # disable=None: a bar on a terminal, nothing in logs and pipes
    with tqdm(total=total, desc="migrate", unit="vector", disable=None, dynamic_ncols=True) as bar:
        version = migrate_store(settings.index, store, on_moved=bar.update, connection=settings.milvus.connection)
    chunks = read_manifest(settings.index).get("counts", {}).get("chunks", 0)
    moved = _count(chunks, "vector")
    print(f"moved {moved} from {before['backend']} to {store['backend']}; version {version}", file=sys.stderr)
    lite = Path(before.get("uri", ""))
    if (
        before["backend"] == "milvus"
        and lite.name
        and lite.exists()
        and lite.resolve().parent == settings.index.resolve()
    ):
        print(
            f"{lite} stays while the previous version, kept to roll back to, uses it; "
            "the next change to the index removes both",
            file=sys.stderr,
        )
    return EXIT_OK


def cmd_citations(args: argparse.Namespace) -> int:
    """``zhrag citations``: exit 0 when every citation is found, 3 when one is not. Reads the index's chunks
    only (no model, vectors or BM25), so it answers in well under a second."""
    from app.usecases.citations import verify_citations_in_index

    text = sys.stdin.read() if args.text == "-" else args.text
    checked = verify_citations_in_index(_settings(args), text)
    if args.json:
        print(json.dumps({"citations": checked}, ensure_ascii=False))
    else:
        for c in checked:
            status = "found" if c["found"] else f"NOT FOUND ({c['reason']})"
            law = c["law"] or c["title"] or c["law_text"] or "?"
            print(f"{text[c['span'][0] : c['span'][1]]}\t{law} {c['article']}\t{status}")
        if not checked:
            print("no citations", file=sys.stderr)
    return EXIT_OK if all(c["found"] for c in checked) else EXIT_PARTIAL


def cmd_list(args: argparse.Namespace) -> int:
    """``zhrag list``."""
    from retrieval.index import LiveDocs

    if args.offset < 0 or args.limit < 1:
        raise CliError("--offset must be >= 0 and --limit >= 1")
    index = LiveDocs(_settings(args).index)
    try:
        rows = index.docs.list_documents(args.offset, args.limit)
        total = index.docs.count_documents()
    finally:
        index.close()
    if args.json:
        documents = [{"doc_id": d, "source": s, "chunks": n} for d, s, n in rows]
        print(json.dumps({"total": total, "offset": args.offset, "documents": documents}, ensure_ascii=False))
    else:
        for doc_id, source, chunks in rows:
            print(f"{doc_id}\t{chunks}\t{source}")
        print(f"{len(rows)} of {_count(total, 'document')}", file=sys.stderr)
    return EXIT_OK


def _count(number: int, noun: str) -> str:
    """``1 document``, ``2 documents``."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def cmd_delete(args: argparse.Namespace) -> int:
    """``zhrag delete``: exit 0 when every id was removed, 3 when some were not in the index."""
    from ingest.pipeline import remove_documents

    settings = _settings(args)
    removal = remove_documents(settings.index, args.doc_ids, settings.milvus.connection)
    for doc_id in removal.missing:
        print(f"not in the index: {doc_id}", file=sys.stderr)
    if removal.removed:
        deleted = _count(len(removal.removed), "document")
        print(
            f"deleted {deleted} ({_count(removal.chunks_removed, 'chunk')}); version {removal.version}", file=sys.stderr
        )
    else:
        print("deleted nothing; the index is unchanged", file=sys.stderr)
    return EXIT_PARTIAL if removal.missing else EXIT_OK


def cmd_tiny_model(args: argparse.Namespace) -> int:
    """``zhrag tiny-model``."""
    from app.tiny_model import SHAPES, build_tiny_qwen3_embedding, build_tiny_qwen3_reranker

    texts = [p.read_text(encoding="utf-8") for p in args.train_text]
    if args.reranker:
        print(build_tiny_qwen3_reranker(args.output, texts))
        return EXIT_OK
    shape = SHAPES[args.shape]
    print(build_tiny_qwen3_embedding(args.output, texts, shape=shape, tokenizer=args.tokenizer, layers=args.layers))
    return EXIT_OK


COMMANDS = {
    "ingest": cmd_ingest,
    "search": cmd_search,
    "serve": cmd_serve,
    "kb": cmd_kb,
    "eval": cmd_eval,
    "info": cmd_info,
    "migrate": cmd_migrate,
    "citations": cmd_citations,
    "list": cmd_list,
    "delete": cmd_delete,
    "optimize": cmd_optimize,
    "tiny-model": cmd_tiny_model,
    "bench": cmd_bench,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``zhrag`` console script."""
    args = build_parser().parse_args(argv)
    COMMAND.own_process = argv is None
    COMMAND.install()
    if COMMAND.own_process:
        COMMAND.dump_stacks_on_sigusr1()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if getattr(args, "top_k", None) is not None and not 1 <= args.top_k <= MAX_TOP_K:
        print(f"zhrag: error: --top-k must be in 1..{MAX_TOP_K}", file=sys.stderr)
        return EXIT_USAGE
    try:
        code = COMMANDS[args.command](args)
    except (UserError, ValidationError, FileNotFoundError) as exc:  # what the user can fix; a fault keeps its traceback
        print(f"zhrag {args.command}: error: {exc}", file=sys.stderr)
        code = EXIT_USAGE
    except KeyboardInterrupt:
        print("zhrag: interrupted; the index was not changed", file=sys.stderr)
        code = EXIT_ERROR
        if COMMAND.own_process:
            COMMAND.leave_now(code)
    COMMAND.work_done(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
