"""The request limits every adapter applies (the HTTP schema declares the same numbers to its clients)."""

__all__ = [
    "MAX_TOP_K",
    "MAX_QUERY_CHARS",
    "MAX_MESSAGES",
    "MAX_MESSAGE_CHARS",
    "MAX_TOTAL_CHARS",
    "MAX_NEIGHBORS",
    "MAX_TEXT_CHARS",
]

MAX_TOP_K = 100
MAX_QUERY_CHARS = 2000
MAX_MESSAGES = 20
MAX_MESSAGE_CHARS = 4000
MAX_TOTAL_CHARS = 16000
"""A conversation longer than this loses its oldest turns (the newest user turn is always kept)."""
MAX_NEIGHBORS = 5
MAX_TEXT_CHARS = 20_000
"""The longest text ``POST /citations/verify`` checks."""
