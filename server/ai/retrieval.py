"""BM25 ranking of knowledge-base passages (``bm25s``): the :class:`Ranker` port of
``domain/knowledge.py``. An index is built from one tenant's passages only."""

from __future__ import annotations

from collections.abc import Sequence

import bm25s
import numpy as np

from ..domain.knowledge import Index, Ranked, Vectors
from ..domain.ports import Passage


class Bm25Index:
    def __init__(self, passages: Sequence[Passage]) -> None:
        self._passages = list(passages)
        self._retriever = bm25s.BM25()
        # Title and text both count: "refund policy" finds the article titled so.
        corpus = [f"{p.title}\n{p.text}" for p in self._passages]
        tokens = bm25s.tokenize(corpus, stopwords="en", show_progress=False)
        self._retriever.index(tokens, show_progress=False)

    def search(self, query: str, limit: int) -> list[Ranked]:
        if not self._passages:
            return []
        tokens = bm25s.tokenize([query], stopwords="en", show_progress=False)
        if not any(len(ids) for ids in tokens.ids):
            return []  # only stop words, or words no passage has
        limit = min(limit, len(self._passages))
        documents, scores = self._retriever.retrieve(tokens, k=limit, show_progress=False)
        return [
            Ranked(self._passages[int(doc)], float(score))
            for doc, score in zip(documents[0], scores[0], strict=True)
            if score > 0
        ]


class Bm25Ranker:
    def build(self, passages: Sequence[Passage]) -> Index:
        return Bm25Index(passages)


class UnitVectors:
    """Embeddings as one normalized matrix: a question's similarities are one product."""

    def __init__(self, vectors: list[list[float]]) -> None:
        matrix = np.asarray(vectors, dtype=np.float32)
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        self._matrix = matrix / np.where(norms == 0, 1, norms)

    def similarities(self, query: list[float]) -> list[float]:
        vector = np.asarray(query, dtype=np.float32)
        norm = float(np.linalg.norm(vector)) or 1.0
        return [float(x) for x in self._matrix @ (vector / norm)]


class UnitVectorIndexer:
    def build(self, vectors: list[list[float]]) -> Vectors:
        return UnitVectors(vectors)
