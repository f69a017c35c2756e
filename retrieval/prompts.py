"""Query instructions for Qwen3-Embedding: ``Instruct: {task}\\nQuery:{query}``; documents get none."""

from __future__ import annotations

from typing import Literal, get_args

from retrieval.errors import InputError

__all__ = ["Domain", "DOMAINS", "INSTRUCTIONS", "DEFAULT_DOMAIN", "resolve_instruction", "domain_of", "format_query"]

Domain = Literal["legal", "medical", "general"]
DOMAINS: tuple[Domain, ...] = get_args(Domain)
DEFAULT_DOMAIN: Domain = "legal"

# Written in English like the instructions Qwen3-Embedding was trained with (its model card recommends
# English instructions even for Chinese text).
INSTRUCTIONS: dict[str, str] = {
    "legal": "Given a Chinese legal question, retrieve the statute articles and legal passages that answer it",
    "medical": "Given a Chinese medical question, retrieve the medical passages and doctors' answers that answer it",
    "general": "Given a web search query, retrieve relevant passages that answer the query",
}


def resolve_instruction(instruction: str | None = None, domain: str | None = None) -> str:
    """The task instruction to use: an explicit one wins, else the domain's, else the legal default.

    Raises:
        ValueError: for an unknown domain.
    """
    if instruction:
        return instruction
    domain = domain or DEFAULT_DOMAIN
    if domain not in INSTRUCTIONS:
        raise InputError(f"unknown domain {domain!r}; choose one of {sorted(INSTRUCTIONS)}")
    return INSTRUCTIONS[domain]


def domain_of(instruction: str | None) -> str | None:
    """The domain whose default instruction this is (``None`` for a custom or missing one)."""
    return next((domain for domain, text in INSTRUCTIONS.items() if text == instruction), None)


def query_prompt(instruction: str) -> str:
    """The prefix put before a query: ``Instruct: {task}\\nQuery:`` (no space after the colon)."""
    return f"Instruct: {instruction}\nQuery:"


def format_query(query: str, instruction: str) -> str:
    """A query as Qwen3-Embedding expects it."""
    return f"{query_prompt(instruction)}{query}"
