"""The lexical leg over analyzer tokens, keyed by docstore row ids: segments' raw statistics scored with
the version's global statistics (:class:`SegmentedBM25`), and the prebuilt bm25s index of a version
written before segments (:class:`BM25Index`, read only)."""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "BM25Index",
    "BM25Builder",
    "ChunkTerms",
    "Postings",
    "SegmentedBM25",
    "BM25_DIR",
    "POSTINGS_DIR",
    "DEFAULT_K1",
    "DEFAULT_B",
]

log = logging.getLogger(__name__)


def _quiet_bm25s() -> None:
    """bm25s sets its logger to DEBUG on import ("Building index from tokens"); keep it quiet."""
    logging.getLogger("bm25s").setLevel(logging.WARNING)


BM25_DIR = "bm25"
POSTINGS_DIR = "postings"
_RIDS_FILE = "rids.npy"
_PARAMS_FILE = "zhrag.json"
# Lucene-style BM25 defaults; b < 0.75 because contextualised statute chunks are short and uniform.
DEFAULT_K1 = 1.2
DEFAULT_B = 0.75


class BM25Index:
    """bm25s over pre-tokenised chunks; position ``i`` in bm25s is row id ``rids[i]``."""

    location = "local"

    def __init__(self, retriever: object, rids: np.ndarray, k1: float, b: float) -> None:
        self._retriever = retriever
        self.rids = np.asarray(rids, dtype=np.int64)
        self.k1, self.b = k1, b
        self._vocab: dict[str, int] = retriever.vocab_dict  # type: ignore[attr-defined]

    @classmethod
    def build(
        cls, tokens: Sequence[Sequence[str]], rids: np.ndarray, k1: float = DEFAULT_K1, b: float = DEFAULT_B
    ) -> BM25Index:
        """Index token lists (one per chunk) for the given row ids."""
        import bm25s

        _quiet_bm25s()
        retriever = bm25s.BM25(k1=k1, b=b)
        retriever.index([list(t) for t in tokens], show_progress=False)
        return cls(retriever, rids, k1, b)

    def count(self) -> int:
        """Number of indexed chunks."""
        return len(self.rids)

    def search(self, tokens: Sequence[str], k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, row ids) for one tokenised query; only positive scores are returned.

        A token repeated in the query counts as often as it occurs (plain BM25 query term frequency).
        """
        return self.search_weighted(Counter(tokens), k, allowed)

    def search_weighted(
        self, term_weights: Mapping[str, float], k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, row ids) scoring ``sum(weight * BM25 term score)`` over the given terms.

        BM25 is a sum over query terms, so this is one query whose terms carry real-valued weights (e.g. the
        turns of a conversation, older ones weighing less). Unknown terms are ignored.
        """
        known = {self._vocab[t]: w for t, w in term_weights.items() if t in self._vocab and w}
        if not known or not len(self.rids) or k <= 0:
            return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
        matrix = self._retriever.scores  # type: ignore[attr-defined]
        data, indices, indptr = matrix["data"], matrix["indices"], matrix["indptr"]
        scores = np.zeros(matrix["num_docs"], dtype=np.float32)
        nonoccurrence = getattr(self._retriever, "nonoccurrence_array", None)
        for token_id, weight in known.items():
            start, end = indptr[token_id], indptr[token_id + 1]
            scores[indices[start:end]] += weight * data[start:end]
            if nonoccurrence is not None:  # BM25L/BM25+ give every document a floor score per term
                scores += weight * nonoccurrence[token_id]
        if allowed is not None:
            scores *= np.isin(self.rids, allowed)
        # Ties go to the lower row id (positions follow row ids here), so every version of this leg returns
        # the same list: all chunks tied with the k-th are candidates, not just those argpartition picked.
        scores, rids = _top_with_ties(scores, self.rids, k)
        return scores[:k], rids[:k]

    @classmethod
    def load(cls, path: Path) -> BM25Index:
        """Read an index written by :meth:`save`."""
        import bm25s

        _quiet_bm25s()
        retriever = bm25s.BM25.load(str(path), show_progress=False, verbosity=0)
        params = json.loads((path / _PARAMS_FILE).read_text())
        return cls(retriever, np.load(path / _RIDS_FILE), params["k1"], params["b"])


@dataclass
class ChunkTerms:
    """The BM25 terms of a run of chunks, counted once (cheap to pickle from an ingest worker).

    Attributes:
        vocab: The distinct terms of all these chunks, in first-seen order.
        ids: Per chunk, the positions in ``vocab`` of its distinct terms.
        tfs: Per chunk, how often each of those terms occurs.
        lengths: Per chunk, its number of terms.
        joined: Per chunk, its terms space-joined (how the docstore keeps them).
    """

    vocab: list[str]
    ids: list[np.ndarray]
    tfs: list[np.ndarray]
    lengths: list[int]
    joined: list[str]

    @classmethod
    def count(cls, tokens: Sequence[Sequence[str]]) -> ChunkTerms:
        """Count each chunk's tokens against one shared vocabulary."""
        vocab: dict[str, int] = {}
        ids, tfs = [], []
        for toks in tokens:
            counts = Counter(toks)
            ids.append(np.fromiter((vocab.setdefault(t, len(vocab)) for t in counts), np.int32, len(counts)))
            tfs.append(np.fromiter(counts.values(), np.float32, len(counts)))
        return cls(list(vocab), ids, tfs, [len(t) for t in tokens], [" ".join(t) for t in tokens])

    def __len__(self) -> int:
        return len(self.ids)


class BM25Builder:
    """Build a :class:`BM25Index` chunk by chunk while ingest streams, instead of all at the end.

    Each added chunk is kept as (term ids, term frequencies), so the final build is a few vectorised
    passes. Scores are bm25s' Lucene variant, computed the same way to the last bit (idf per term in
    double precision, the term-frequency part in double, stored as float32).
    """

    def __init__(self, k1: float = DEFAULT_K1, b: float = DEFAULT_B) -> None:
        self.k1, self.b = k1, b
        self.vocab: dict[str, int] = {}
        self._chunks: dict[int, tuple[int, np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self._chunks)

    def add(self, rids: Sequence[int], terms: ChunkTerms) -> None:
        """Add (or replace) chunks under their row ids."""
        vocab = self.vocab
        local = np.fromiter((vocab.setdefault(t, len(vocab)) for t in terms.vocab), np.int32, len(terms.vocab))
        for rid, ids, tfs, length in zip(rids, terms.ids, terms.tfs, terms.lengths, strict=True):
            self._chunks[int(rid)] = (length, local[ids], tfs)

    def add_stored(self, batches: Iterable[tuple[Sequence[int], Sequence[Sequence[str]]]]) -> BM25Builder:
        """Add chunks from (row ids, terms) batches as a docstore keeps them (``DocStore.iter_tokens``)."""
        for rids, tokens in batches:
            self.add(rids, ChunkTerms.count(tokens))
        return self

    def discard(self, rids: Sequence[int]) -> None:
        """Forget chunks (deleted from the index)."""
        for rid in rids:
            self._chunks.pop(int(rid), None)

    def build(self) -> BM25Index:
        """The index over every chunk added, positions ordered by row id."""
        import bm25s

        _quiet_bm25s()
        rids = np.fromiter(sorted(self._chunks), dtype=np.int64, count=len(self._chunks))
        entries = [self._chunks[int(r)] for r in rids]
        n_docs, n_vocab = len(entries), len(self.vocab)
        doc_len = np.fromiter((e[0] for e in entries), dtype=np.int64, count=n_docs)
        ids = np.concatenate([e[1] for e in entries]) if entries else np.zeros(0, np.int32)
        tfs = np.concatenate([e[2] for e in entries]) if entries else np.zeros(0, np.float32)
        doc = np.repeat(np.arange(n_docs, dtype=np.int32), [len(e[1]) for e in entries])
        df = np.bincount(ids, minlength=n_vocab)
        idf = np.array([math.log(1 + (n_docs - f + 0.5) / (f + 0.5)) for f in df.tolist()], dtype=np.float32)
        avg = doc_len.mean() if n_docs else 1.0
        tfc = tfs / (self.k1 * ((1 - self.b) + self.b * doc_len[doc] / avg) + tfs)
        scores = (idf[ids] * tfc).astype(np.float32)
        order = np.argsort(ids, kind="stable")  # term-major; stable keeps rows ascending within a term: CSC
        indptr = np.zeros(n_vocab + 1, dtype=np.int64)
        np.cumsum(df, out=indptr[1:])
        retriever = bm25s.BM25(k1=self.k1, b=self.b)
        retriever.scores = {"data": scores[order], "indices": doc[order], "indptr": indptr, "num_docs": n_docs}
        retriever.vocab_dict = dict(self.vocab)
        retriever.nonoccurrence_array = None  # Lucene BM25 has no per-term floor
        return BM25Index(retriever, rids, self.k1, self.b)

    def postings(self) -> Postings:
        """The raw statistics of every chunk added (no IDF, no length norm): one segment's share of an index
        whose scores are computed at query time from every segment's statistics."""
        rids = np.fromiter(sorted(self._chunks), dtype=np.int64, count=len(self._chunks))
        entries = [self._chunks[int(r)] for r in rids]
        lengths = np.fromiter((e[0] for e in entries), dtype=np.int64, count=len(entries))
        ids = np.concatenate([e[1] for e in entries]) if entries else np.zeros(0, np.int32)
        tfs = np.concatenate([e[2] for e in entries]) if entries else np.zeros(0, np.float32)
        doc = np.repeat(np.arange(len(entries), dtype=np.int32), [len(e[1]) for e in entries])
        used = np.unique(ids)  # terms of chunks discarded since are dropped from the vocabulary
        remap = np.full(len(self.vocab), -1, dtype=np.int64)
        remap[used] = np.arange(len(used))
        terms = [""] * len(self.vocab)
        for term, term_id in self.vocab.items():
            terms[term_id] = term
        ids = remap[ids]
        order = np.argsort(ids, kind="stable")
        indptr = np.zeros(len(used) + 1, dtype=np.int64)
        np.cumsum(np.bincount(ids, minlength=len(used)), out=indptr[1:])
        vocab = {terms[int(t)]: i for i, t in enumerate(used)}
        return Postings(vocab, indptr, doc[order], tfs[order].astype(np.float32), lengths, rids)


@dataclass
class Postings:
    """One segment's BM25 statistics: term -> (chunk positions, term frequencies) in term-major CSR form,
    plus each chunk's length and row id (positions ordered by row id). IDF and the average length are not
    here: they come from every segment of a version at query time, so a segment never changes."""

    vocab: dict[str, int]
    indptr: np.ndarray
    positions: np.ndarray
    tfs: np.ndarray
    lengths: np.ndarray
    rids: np.ndarray

    def save(self, path: Path) -> None:
        """Write into directory ``path``."""
        path.mkdir(parents=True, exist_ok=True)
        terms = sorted(self.vocab, key=self.vocab.__getitem__)
        (path / "vocab.json").write_text(json.dumps(terms, ensure_ascii=False), encoding="utf-8")
        with open(path / "postings.npz", "wb") as fh:
            np.savez(
                fh, indptr=self.indptr, positions=self.positions, tfs=self.tfs, lengths=self.lengths, rids=self.rids
            )

    @classmethod
    def load(cls, path: Path) -> Postings:
        """Read postings written by :meth:`save`."""
        terms = json.loads((path / "vocab.json").read_text(encoding="utf-8"))
        with np.load(path / "postings.npz") as data:
            arrays = {name: data[name] for name in ("indptr", "positions", "tfs", "lengths", "rids")}
        return cls({t: i for i, t in enumerate(terms)}, **arrays)

    @classmethod
    def combine(cls, parts: Sequence[tuple[Postings, np.ndarray | None]]) -> Postings:
        """One postings over the live rows of several (a reader's view of many small segments, searched as
        one): positions renumbered, vocabularies united, deleted rows dropped."""
        vocab: dict[str, int] = {}
        terms, positions, tfs, lengths, rids = [], [], [], [], []
        offset = 0
        for postings, live in parts:
            keep = np.ones(len(postings.rids), dtype=bool) if live is None else live
            renumbered = np.full(len(postings.rids), -1, dtype=np.int64)
            renumbered[keep] = offset + np.arange(int(keep.sum()))
            local_terms = sorted(postings.vocab, key=postings.vocab.__getitem__)
            global_ids = np.fromiter((vocab.setdefault(t, len(vocab)) for t in local_terms), np.int64, len(local_terms))
            new = renumbered[postings.positions]
            kept = new >= 0
            terms.append(np.repeat(global_ids, np.diff(postings.indptr))[kept])
            positions.append(new[kept])
            tfs.append(postings.tfs[kept])
            lengths.append(postings.lengths[keep])
            rids.append(postings.rids[keep])
            offset += int(keep.sum())
        term = np.concatenate(terms) if terms else np.zeros(0, np.int64)
        order = np.argsort(term, kind="stable")
        indptr = np.zeros(len(vocab) + 1, dtype=np.int64)
        np.cumsum(np.bincount(term, minlength=len(vocab)), out=indptr[1:])
        return cls(
            vocab,
            indptr,
            np.concatenate(positions)[order].astype(np.int32) if positions else np.zeros(0, np.int32),
            np.concatenate(tfs)[order] if tfs else np.zeros(0, np.float32),
            np.concatenate(lengths) if lengths else np.zeros(0, np.int64),
            np.concatenate(rids) if rids else np.zeros(0, np.int64),
        )

    def term_slices(self, terms: Sequence[str]) -> list[tuple[int, int] | None]:
        """Per term, its (start, end) in ``positions``/``tfs``, or ``None`` when absent."""
        out: list[tuple[int, int] | None] = []
        for term in terms:
            term_id = self.vocab.get(term)
            out.append(None if term_id is None else (int(self.indptr[term_id]), int(self.indptr[term_id + 1])))
        return out


class SegmentedBM25:
    """BM25 over several segments' :class:`Postings` with exact global statistics.

    Document frequencies, the chunk count and the average length are summed over the live chunks of every
    segment, so the weights (bm25s' Lucene variant, computed as :class:`BM25Builder` computes them, to the
    bit) equal those of one index built from scratch over the same chunks. A version never changes, so a
    term's weights are computed the first time a query asks for it and kept: opening a version costs what
    reading it costs, and a term's later queries cost what they cost on one prebuilt index.

    Args:
        parts: Per segment, its postings and the mask of its live positions (``None``: all live).
        k1, b: BM25 parameters.
    """

    location = "local"

    def __init__(self, parts: Sequence[tuple[Postings, np.ndarray | None]], k1: float, b: float) -> None:
        self.k1, self.b = k1, b
        self._parts = list(parts)
        self._n = sum(len(p.rids) if live is None else int(live.sum()) for p, live in parts)
        total = sum(int(p.lengths.sum() if live is None else p.lengths[live].sum()) for p, live in parts)
        self._avg = total / self._n if self._n else 1.0
        self._weights: dict[str, list[tuple[int, np.ndarray, np.ndarray]]] = {}

    def count(self) -> int:
        """Live chunks."""
        return self._n

    def _term(self, term: str) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """Per part holding the term: (part, positions, final weights); computed once per version."""
        found = self._weights.get(term)
        if found is not None:
            return found
        cuts = []
        df = 0
        for i, (postings, live) in enumerate(self._parts):
            term_id = postings.vocab.get(term)
            if term_id is not None:
                start, end = int(postings.indptr[term_id]), int(postings.indptr[term_id + 1])
                cuts.append((i, start, end))
                df += end - start if live is None else int(live[postings.positions[start:end]].sum())
        found = []
        if df:
            idf = np.float32(math.log(1 + (self._n - df + 0.5) / (df + 0.5)))
            for i, start, end in cuts:
                postings = self._parts[i][0]
                positions, tfs = postings.positions[start:end], postings.tfs[start:end]
                tfc = tfs / (self.k1 * ((1 - self.b) + self.b * postings.lengths[positions] / self._avg) + tfs)
                found.append((i, positions, (idf * tfc).astype(np.float32)))
        self._weights[term] = found  # a race computes the same value twice: harmless
        return found

    def search(self, tokens: Sequence[str], k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, row ids) for one tokenised query (a repeated token counts as often as it occurs)."""
        return self.search_weighted(Counter(tokens), k, allowed)

    def search_weighted(
        self, term_weights: Mapping[str, float], k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, row ids) scoring ``sum(weight * BM25 term score)``; ties go to the lower row id."""
        empty = np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
        if not self._n or k <= 0:
            return empty
        scores: dict[int, np.ndarray] = {}
        for term, weight in term_weights.items():
            if not weight:
                continue
            for i, positions, weights in self._term(term):
                if i not in scores:
                    scores[i] = np.zeros(len(self._parts[i][0].rids), dtype=np.float32)
                scores[i][positions] += weight * weights
        found = [self._top(i, part_scores, k, allowed) for i, part_scores in scores.items()]
        found = [f for f in found if len(f[0])]
        if len(found) <= 1:
            return (found[0][0][:k], found[0][1][:k]) if found else empty
        all_scores = np.concatenate([s for s, _ in found])
        rids = np.concatenate([r for _, r in found])
        top = np.lexsort((rids, -all_scores))[:k]
        return all_scores[top], rids[top]

    def _top(self, part: int, scores: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """A part's candidates: its top ``k`` and every chunk tied with the k-th, ties by row id."""
        postings, live = self._parts[part]
        if live is not None:
            scores *= live
        if allowed is not None:
            scores *= np.isin(postings.rids, allowed)
        scores, rids = _top_with_ties(scores, postings.rids, k)
        order = np.lexsort((rids, -scores))  # positions follow row ids within a segment, not in a united tail
        return scores[order], rids[order]


def _top_with_ties(scores: np.ndarray, rids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The positive scores among the top ``k`` plus every one tied with the k-th, best first, ties by row id."""
    k = min(k, len(scores))
    top = np.argpartition(-scores, k - 1)[:k]
    kth = scores[top].min()
    if kth > 0:
        top = np.concatenate([top[scores[top] > kth], np.flatnonzero(scores == kth)])
    else:
        top = top[scores[top] > 0]
    top = top[np.lexsort((top, -scores[top]))]
    return scores[top], rids[top]
