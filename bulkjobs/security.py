"""API keys (stored only as SHA-256 hashes) and signed, expiring, job-scoped tokens.

Keys are configured as lines `tenant:sha256:<hex>` (a file, or the environment
separated by commas/newlines); `bulkjobs keygen TENANT` prints a new key and its line.
Event-stream tokens are `<expiry>.<tenant>.<base64url HMAC-SHA256 of
"events.<job>.<tenant>.<expiry>">`, checked in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import Iterable

import attrs

from .parsing import ascii_uint

_LINE = re.compile(r"^(?P<tenant>[A-Za-z0-9_-]{1,64}):sha256:(?P<digest>[0-9a-f]{64})$")
KEY_PREFIX = "bjk_"


class KeyConfigError(ValueError):
    """A key line that does not parse; the message names the line, never a secret."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh API key with 256 random bits."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


@attrs.define
class KeyRing:
    """Maps key hashes to tenants. Empty means the server runs open (single tenant).

    Mutable only through `replace`, which swaps the whole mapping in one assignment: a
    lookup sees the old keys or the new ones, never a mix (SIGHUP reloads).
    """

    tenants_by_hash: dict[str, str] = attrs.field(factory=dict)

    def replace(self, other: KeyRing) -> None:
        """Take `other`'s keys, atomically."""
        self.tenants_by_hash = dict(other.tenants_by_hash)

    @property
    def enabled(self) -> bool:
        return bool(self.tenants_by_hash)

    def tenant_for(self, key: str) -> str | None:
        """The tenant of a presented key, or None; constant time per configured key."""
        # surrogateescape: a header with non-UTF-8 bytes is a wrong key, not a crash
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest().encode()
        found = None
        for known, tenant in self.tenants_by_hash.items():
            if hmac.compare_digest(known.encode(), digest):
                found = tenant
        return found

    @classmethod
    def parse(cls, lines: Iterable[str]) -> KeyRing:
        mapping: dict[str, str] = {}
        for n, raw in enumerate(lines, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            match = _LINE.match(line)
            if match is None:
                raise KeyConfigError(f"API key line {n} is not 'tenant:sha256:<64 hex>'")
            mapping[match["digest"]] = match["tenant"]
        return cls(mapping)

    @classmethod
    def load(cls, path: str, env_value: str) -> KeyRing:
        """Keys from a file (if given) plus the environment value.

        A source that is configured but holds no key raises `KeyConfigError`: an
        empty ring means "open", and a typo must not open the server to everyone.
        """
        lines = re.split(r"[,\n]", env_value) if env_value else []
        if path:
            with open(path, encoding="utf-8") as fh:
                lines += fh.read().splitlines()
        ring = cls.parse(lines)
        if (path or env_value) and not ring.enabled:
            where = " and ".join(
                name for name, given in ((path, path), ("BULKJOBS_API_KEYS", env_value)) if given
            )
            raise KeyConfigError(
                f"API keys are configured ({where}) but none was found; refusing to run"
                " open (remove the setting to run without keys)"
            )
        return ring


class TokenSigner:
    """Signs and checks short-lived tokens that open one job's event stream."""

    def __init__(self, secret: bytes | None = None, ttl_s: int = 3600) -> None:
        self._secret = secret or os.urandom(32)
        self.ttl_s = ttl_s

    def use_secret(self, secret: bytes) -> None:
        """Sign with the store's secret from now on: tokens then survive a restart and
        are valid on every process that shares the store."""
        self._secret = secret

    def sign(self, job_id: str, tenant: str, now: float | None = None) -> str:
        expiry = int((time.time() if now is None else now) + self.ttl_s)
        return f"{expiry}.{tenant}.{self._mac(job_id, tenant, expiry)}"

    def check(self, token: str, job_id: str, now: float | None = None) -> str | None:
        """The tenant the token was issued for when valid for `job_id`, else None."""
        parts = token.split(".")
        expiry = ascii_uint(parts[0], max_digits=12) if len(parts) == 3 else None
        if expiry is None or not parts[1].isascii():
            return None
        tenant, mac = parts[1], parts[2]
        if expiry < (time.time() if now is None else now):
            return None
        # bytes: compare_digest refuses str with non-ASCII characters (a TypeError)
        expected = self._mac(job_id, tenant, expiry).encode()
        presented = mac.encode("utf-8", "surrogateescape")
        return tenant if hmac.compare_digest(presented, expected) else None

    def _mac(self, job_id: str, tenant: str, expiry: int) -> str:
        msg = f"events.{job_id}.{tenant}.{expiry}".encode("utf-8", "surrogateescape")
        digest = hmac.new(self._secret, msg, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")
