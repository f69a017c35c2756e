"""Who may do what on which knowledge base: keys, roles and the safe default for a server with no keys.

A key is known only by its SHA-256 hash. Each key has a role per knowledge base — ``read`` (search, verify
citations, list documents), ``write`` (also add and delete documents), ``admin`` (everything, on every base,
and creating or deleting bases) — given in a key file (``ZHRAG_KEYS_FILE``, TOML or JSON)::

    [[keys]]
    name = "dify-bot"                      # a label for logs, never the key
    sha256 = "9f86d081884c7d65…"           # echo -n KEY | sha256sum
    roles = { statutes = "read", "case-files" = "write" }
    rate = 50                              # requests per second (optional; burst = 2 x rate)

    [[keys]]
    name = "ops"
    sha256 = "…"
    roles = { "*" = "admin" }

``ZHRAG_API_KEYS`` (read on every base) and ``ZHRAG_ADMIN_KEYS`` (admin) are shorthands for the same.
Without any key a server is open to whoever reaches it, so how much it gives them depends on where it
listens: on a loopback address (a developer's laptop) everything, on any other address reads only
(``ZHRAG_ANONYMOUS_ROLE`` says otherwise).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from retrieval.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "Role",
    "EVERY_BASE",
    "BASE_NAME_PATTERN",
    "unknown_base",
    "Grant",
    "KeyFileError",
    "AccessDenied",
    "Access",
    "RateLimiter",
    "key_hash",
    "load_key_file",
    "valid_base_name",
    "ANONYMOUS",
    "is_loopback",
]

Role = Literal["read", "write", "admin"]
ROLES: tuple[Role, ...] = get_args(Role)
_RANK = {role: i for i, role in enumerate(ROLES)}
EVERY_BASE = "*"
BASE_NAME_PATTERN = r"^[\w\u4e00-\u9fff][\w.\-\u4e00-\u9fff]{0,63}$"
"""A knowledge base name: a directory name of letters, digits, CJK and ``_ . -`` (and never ``..``)."""
_BASE_NAME = re.compile(BASE_NAME_PATTERN)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def key_hash(key: str) -> str:
    """The SHA-256 hex digest a key is stored as."""
    return hashlib.sha256(key.encode()).hexdigest()


def valid_base_name(name: str) -> bool:
    """A knowledge base name is a directory name: letters, digits, CJK, ``_ . -``; no ``/`` and no ``..``."""
    return bool(_BASE_NAME.match(name)) and ".." not in name


def is_loopback(host: str) -> bool:
    """Whether a server bound to ``host`` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Grant:
    """What one key (or the anonymous caller) may do.

    Attributes:
        name: A label for logs and rate limiting (never the key).
        roles: Base name (or ``*``, every base) -> role.
        rate: Requests per second allowed (``None``: the server's default).
    """

    name: str
    roles: dict[str, Role] = field(default_factory=dict)
    rate: float | None = None

    @property
    def admin(self) -> bool:
        """Admin somewhere is admin everywhere (creating and deleting bases is not per base)."""
        return "admin" in self.roles.values()

    def role_on(self, base: str) -> Role | None:
        """This grant's role on ``base`` (``None``: it may not even know the base exists)."""
        if self.admin:
            return "admin"
        return self.roles.get(base) or self.roles.get(EVERY_BASE)

    def may(self, role: Role, base: str) -> bool:
        """Whether this grant has ``role`` (or more) on ``base``."""
        held = self.role_on(base)
        return held is not None and _RANK[held] >= _RANK[role]

    def visible(self, bases: Iterable[str]) -> list[str]:
        """The bases this grant may read, in the order given."""
        return [b for b in bases if self.role_on(b) is not None]


class KeyFileError(UserError, ValueError):
    """A key file that cannot be used (names the file and the line)."""


@dataclass
class AccessDenied(Exception):
    """A request refused: 401 (no key), 403 (wrong key or role) or 404 (a base it may not know of)."""

    status: int
    message: str
    reason: Literal["no_key", "bad_key", "role", "unknown_base"]

    def __str__(self) -> str:
        return self.message


def _line_of(text: str, pattern: str, start: int = 0) -> int:
    """1-based line of the first match of ``pattern`` at or after character ``start`` (else ``start``'s line)."""
    found = re.compile(pattern).search(text, start)
    return text.count("\n", 0, found.start() if found else start) + 1


def _field(name: str) -> str:
    """A pattern for ``name = …`` (TOML) or ``"name": …`` (JSON)."""
    return rf'(?<![\w-])"?{re.escape(name)}"?\s*[=:]'


def _entry_starts(text: str, json_file: bool) -> list[int]:
    """Where each key entry begins in the file's text: ``[[keys]]`` headers (TOML), or the objects inside the
    top-level ``keys`` list (JSON: the third level of brackets)."""
    if not json_file:
        return [m.start() for m in re.finditer(r"(?m)^\s*\[\[keys\]\]", text)]
    starts, depth, in_string, escaped = [], 0, False, False
    for i, ch in enumerate(text):
        if in_string:
            escaped, in_string = (not escaped and ch == "\\"), in_string and (escaped or ch != '"')
            continue
        if ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
            if ch == "{" and depth == 3:
                starts.append(i)
        elif ch in "}]":
            depth -= 1
    return starts


def _grant(entry: Any, where: str, text: str, start: int) -> tuple[str, Grant]:
    def fail(message: str, pattern: str) -> KeyFileError:
        return KeyFileError(f"{where}:{_line_of(text, pattern, start)}: {message}")

    if not isinstance(entry, dict):
        raise fail("each key entry is a table with name, sha256 and roles", "$^")
    for plain in ("key", "secret"):
        if plain in entry:
            message = 'a key in plain text: store its SHA-256 instead (sha256 = "…", echo -n KEY | sha256sum)'
            raise fail(message, _field(plain))
    digest = str(entry.get("sha256", "")).lower()
    if not _HEX64.match(digest):
        raise fail("sha256 must be the key's SHA-256 as 64 hex digits", _field("sha256"))
    roles = entry.get("roles")
    if not isinstance(roles, dict) or not roles:
        raise fail('roles must map base names (or "*") to read, write or admin', _field("roles"))
    for base, role in roles.items():
        if base != EVERY_BASE and not valid_base_name(str(base)):
            raise fail(f"{base!r} is not a knowledge base name (no '/', no '..')", re.escape(str(base)))
        if role not in ROLES:
            raise fail(f"unknown role {role!r} for {base!r} (read, write or admin)", re.escape(f'"{role}"'))
    rate = entry.get("rate")
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int | float) or rate <= 0):
        raise fail("rate must be a positive number of requests per second", _field("rate"))
    name = str(entry.get("name") or digest[:8])
    return digest, Grant(name=name, roles=dict(roles), rate=rate)


def load_key_file(path: Path) -> dict[str, Grant]:
    """The grants of a key file, by key hash.

    Raises:
        KeyFileError: unreadable, not TOML/JSON, a plain-text key, an unknown role or a bad base name — naming
            the file and the line.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read the key file: {exc.strerror}") from exc
    json_file = path.suffix.lower() == ".json" or text.lstrip().startswith("{")
    try:
        data = json.loads(text) if json_file else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise KeyFileError(f"{path}: not valid {'JSON' if json_file else 'TOML'}: {exc}") from exc
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise KeyFileError(f'{path}: expected a list of keys ([[keys]] tables, or {{"keys": [...]}})')
    starts = _entry_starts(text, json_file)
    grants: dict[str, Grant] = {}
    for i, entry in enumerate(entries):
        start = starts[i] if i < len(starts) else 0
        digest, grant = _grant(entry, str(path), text, start)
        if digest in grants:
            raise KeyFileError(f"{path}:{_line_of(text, digest, start)}: the same key twice ({grant.name})")
        grants[digest] = grant
    return grants


class RateLimiter:
    """A token bucket per grant: ``rate`` requests per second, bursts up to twice that."""

    def __init__(self, default_rate: float) -> None:
        self.default_rate = default_rate
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def wait_s(self, grant: Grant, who: str) -> float:
        """0 when ``who`` (a key's name, or an anonymous caller's address) may go now (a token is taken), else the
        seconds until one is free."""
        rate = grant.rate or self.default_rate
        if rate <= 0:
            return 0.0
        burst, now = max(1.0, 2 * rate), time.monotonic()
        with self._lock:
            tokens, then = self._buckets.get(who, (burst, now))
            tokens = min(burst, tokens + (now - then) * rate)
            if tokens < 1:
                self._buckets[who] = (tokens, now)
                return (1 - tokens) / rate
            self._buckets[who] = (tokens - 1, now)
            if len(self._buckets) > 100_000:  # many anonymous addresses: forget the full buckets
                self._buckets = {k: v for k, v in self._buckets.items() if v[0] < burst}
            return 0.0


ANONYMOUS = "anonymous"
"""The name of the grant of a request without a key."""


@dataclass
class Access:
    """The server's keys and what a caller without one gets.

    Attributes:
        grants: Key hash -> grant.
        anonymous: What a request without a key may do (``None``: it gets 401).
        anonymous_why: The setting a refused anonymous write should name.
    """

    grants: dict[str, Grant]
    anonymous: Grant | None
    anonymous_why: str = ""

    @classmethod
    def configure(
        cls,
        api_keys: Iterable[str] = (),
        admin_keys: Iterable[str] = (),
        keys_file: Path | None = None,
        host: str = "127.0.0.1",
        anonymous_role: Role | Literal["none"] | None = None,
    ) -> Access:
        """From the settings' keys; ``anonymous_role`` ``None`` decides by ``host`` (see the module)."""
        grants = load_key_file(keys_file) if keys_file else {}
        for i, key in enumerate(k for k in api_keys if k):
            grants.setdefault(key_hash(key), Grant(f"api-key-{i + 1}", {EVERY_BASE: "read"}))
        for i, key in enumerate(k for k in admin_keys if k):
            grants[key_hash(key)] = Grant(f"admin-key-{i + 1}", {EVERY_BASE: "admin"})
        why = ""
        if anonymous_role is None:
            if grants:
                anonymous_role = "none"
            elif is_loopback(host):
                anonymous_role = "admin"
            else:
                anonymous_role = "read"
                why = (
                    f"this server listens on {host} with no keys, so it serves reads only: give keys write access "
                    "(ZHRAG_KEYS_FILE or ZHRAG_ADMIN_KEYS), or set ZHRAG_ANONYMOUS_ROLE=write to let anyone write"
                )
        anonymous = None if anonymous_role == "none" else Grant(ANONYMOUS, {EVERY_BASE: anonymous_role})
        return cls(grants, anonymous, why)

    @property
    def keyed(self) -> bool:
        """Whether any key is configured."""
        return bool(self.grants)

    def grant_for(self, key: str | None) -> Grant:
        """The caller's grant.

        Raises:
            AccessDenied: 401 without a key where one is needed, 403 for a key this server does not know.
        """
        if key is None or not self.grants:
            if self.anonymous is None:
                raise AccessDenied(401, "this server wants 'Authorization: Bearer <key>'", "no_key")
            return self.anonymous
        grant = self.grants.get(key_hash(key))  # a lookup by hash: the key itself is never compared or kept
        if grant is None:
            raise AccessDenied(403, "that key is not accepted", "bad_key")
        return grant

    def check(self, grant: Grant, role: Role, base: str) -> None:
        """Raise unless ``grant`` has ``role`` on ``base``: 404 (same as an unknown base) when it may not read
        the base, 403 naming what is missing when it may read but not do this."""
        if grant.role_on(base) is None:
            raise AccessDenied(404, unknown_base(base), "unknown_base")
        if not grant.may(role, base):
            if grant.name == ANONYMOUS and self.anonymous_why:
                raise AccessDenied(403, self.anonymous_why, "role")
            doing = {"write": "changing documents", "admin": "this"}.get(role, "this")
            message = (
                f"{doing} needs the {role} role on {base!r}; this key has {grant.role_on(base)} "
                "(roles per key: ZHRAG_KEYS_FILE; admin keys: ZHRAG_ADMIN_KEYS)"
            )
            raise AccessDenied(403, message, "role")

    def check_admin(self, grant: Grant) -> None:
        """Raise 403 unless ``grant`` is admin (creating and deleting bases)."""
        if not grant.admin:
            message = self.anonymous_why if grant.name == ANONYMOUS and self.anonymous_why else ""
            raise AccessDenied(403, message or "creating or deleting knowledge bases needs an admin key", "role")


def unknown_base(base: str) -> str:
    """The one message for a base that does not exist and for one the caller may not see."""
    return f"no knowledge base {base!r}"
