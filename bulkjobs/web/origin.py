"""Open mode's guards against browsers (issue 13 item 12).

Without API keys anyone who can reach the port can act, so a web page must not reach
it through the developer's browser. Two guards, only in open mode:

- DNS rebinding: a hostile name that resolves to 127.0.0.1 arrives with that name in
  `Host`. Only loopback names (`localhost`, `*.localhost`, 127.0.0.0/8, `::1`), the
  address the server is bound to, and `--allowed-hosts` (`*`: any) are answered; else
  403 `host_not_allowed`.
- Cross-site requests: a form or `fetch` from another site can POST without a preflight.
  POST, PUT, PATCH and DELETE whose `Origin` is not this server's own, or that carry
  `Sec-Fetch-Site: cross-site`, get 403 `cross_site_request`. Clients that send neither
  header (curl, the CLI, the Python client) are not affected; the dashboard is same
  origin.

With API keys neither applies: a key is a header, which no cross-site page can send
without the server's consent (CORS), and a rebound name does not carry it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable

from aiohttp import web
from yarl import URL

from ..errors import BulkJobsError
from .keys import KEYRING, SETTINGS

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_ANY_ADDRESS = frozenset({"", "0.0.0.0", "::"})


def split_host(value: str) -> tuple[str, str]:
    """`Host` as (name, port): lower case, no trailing dot, IPv6 without brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        return name, rest.removeprefix(":")
    name, _, port = value.partition(":") if value.count(":") == 1 else (value, "", "")
    return name.rstrip("."), port


def is_loopback_name(name: str) -> bool:
    if name == "localhost" or name.endswith(".localhost"):
        return True  # browsers resolve these to loopback themselves (RFC 6761)
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def allowed_names(request: web.Request) -> frozenset[str]:
    """`--allowed-hosts`, plus the address the server is bound to (when specific)."""
    s = request.app[SETTINGS]
    names = {split_host(h)[0] for h in s.allowed_hosts.split(",") if h.strip()}
    bound = s.host.strip("[]").lower()
    if bound not in _ANY_ADDRESS:
        names.add(bound)
    return frozenset(names)


def check_host(request: web.Request) -> None:
    """Refuse a `Host` that could come from DNS rebinding."""
    host = request.headers.get("Host")
    if host is None:
        return  # HTTP/1.0 without Host: no browser sends that
    name, _ = split_host(host)
    allowed = allowed_names(request)
    if "*" in allowed or is_loopback_name(name) or name in allowed:
        return
    raise BulkJobsError(
        "host_not_allowed",
        "This server has no API keys, so it answers only loopback host names; add this"
        " name to --allowed-hosts (BULKJOBS_ALLOWED_HOSTS) to serve it.",
    )


def check_same_origin(request: web.Request) -> None:
    """Refuse a state-changing request that a browser sent from another site."""
    if request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
        raise _cross_site("Sec-Fetch-Site: cross-site")
    origin = request.headers.get("Origin")
    if origin is not None and not _is_own_origin(request, origin):
        raise _cross_site("its Origin is not this server's")


def _is_own_origin(request: web.Request, origin: str) -> bool:
    try:
        url = URL(origin)
    except ValueError:
        return False
    if not url.absolute or url.host is None or url.scheme not in ("http", "https"):
        return False  # includes `Origin: null` (sandboxed frames, file: pages)
    name, port = split_host(request.headers.get("Host", ""))
    # No port in Host: the default one of the scheme the browser used (a TLS proxy may
    # stand in front, so the schemes themselves are not compared)
    own_port = int(port) if port.isdecimal() else (443 if url.scheme == "https" else 80)
    return (url.host.rstrip(".").lower(), url.port) == (name, own_port)


def _cross_site(why: str) -> BulkJobsError:
    return BulkJobsError(
        "cross_site_request",
        f"This server has no API keys, so it refuses changes from other sites' pages ({why}).",
    )


@web.middleware
async def open_mode_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """In open mode: only expected Host names; no state changes from other sites."""
    # no such route (or method): the 404/405 tells and changes nothing, as in auth
    unmatched = request.match_info.http_exception is not None
    if not request.app[KEYRING].enabled and not unmatched:
        check_host(request)
        if request.method in STATE_CHANGING:
            check_same_origin(request)
    return await handler(request)
