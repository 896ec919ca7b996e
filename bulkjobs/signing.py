"""Standard Webhooks signatures: `whsec_` secrets and `v1,<base64 HMAC-SHA256>` values.

The signed content is `{webhook-id}.{webhook-timestamp}.{body}`; with several
secrets configured (rotation) one signature per secret is sent, space-separated,
so a receiver that knows any one of them can verify.

With API keys (several tenants), each tenant's messages are signed with keys of its
own, derived from the server's: HMAC-SHA256(server key, "tenant:" + tenant), shown to
the tenant as `whsec_<base64>` (`bulkjobs webhook-secret TENANT`). A tenant can verify
its own messages and cannot forge another tenant's. Rotating the server's secrets
rotates every tenant's. Without API keys the server's secrets sign directly.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"
_SEPARATORS = re.compile(r"[\s,]+")


def parse_secrets(text: str) -> list[bytes]:
    """The keys of a space- or comma-separated list of `whsec_<base64>` secrets."""
    keys = []
    for token in _SEPARATORS.split(text.strip()):
        if token:
            keys.append(_decode_secret(token))
    return keys


def _decode_secret(token: str) -> bytes:
    if not token.startswith(SECRET_PREFIX):
        raise ValueError(f"webhook secrets must start with {SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(token[len(SECRET_PREFIX) :], validate=True)
    except binascii.Error:
        raise ValueError("a webhook secret is not valid base64 after 'whsec_'") from None
    if len(key) < 16:
        raise ValueError("a webhook secret must hold at least 16 bytes")
    return key


def new_secret() -> str:
    """A fresh random secret in the `whsec_` format (24 bytes, as Standard Webhooks suggests)."""
    return SECRET_PREFIX + base64.b64encode(os.urandom(24)).decode()


def tenant_key(server_key: bytes, tenant: str) -> bytes:
    """The signing key of one tenant, derived from one server key."""
    return hmac.new(server_key, f"tenant:{tenant}".encode(), hashlib.sha256).digest()


def tenant_secrets(keys: list[bytes], tenant: str) -> list[str]:
    """A tenant's secrets in the `whsec_` format, one per server key (in its order)."""
    return [SECRET_PREFIX + base64.b64encode(tenant_key(k, tenant)).decode() for k in keys]


def sign(keys: list[bytes], msg_id: str, timestamp_s: int, body: bytes) -> str:
    """The `webhook-signature` header value: one `v1,<sig>` per key, space-separated."""
    content = f"{msg_id}.{timestamp_s}.".encode() + body
    sigs = []
    for key in keys:
        digest = hmac.new(key, content, hashlib.sha256).digest()
        sigs.append(f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}")
    return " ".join(sigs)
