"""Chinese text handling shared by ingestion and querying."""

from __future__ import annotations

from retrieval.text.analyzer import Analyzer, default_analyzer
from retrieval.text.normalize import normalize_text, to_simplified

__all__ = ["Analyzer", "default_analyzer", "normalize_text", "to_simplified"]
