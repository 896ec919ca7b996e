"""A small webhook receiver for bulkjobs: verifies the Standard Webhooks signature and
prints a one-line summary of each job event.

    export WEBHOOK_SECRET=whsec_$(head -c 24 /dev/urandom | base64)
    python examples/webhook_receiver.py --port 9000            # this terminal
    BULKJOBS_WEBHOOK_SECRETS=$WEBHOOK_SECRET BULKJOBS_WEBHOOK_ALLOW_PRIVATE=1 bulkjobs serve

then submit a job with `"webhook": {"url": "http://127.0.0.1:9000/webhooks"}`.

It needs only aiohttp and the standard library: the verification below is what any
receiver does, in any language.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import time
from typing import Any

from aiohttp import web

TOLERANCE_S = 5 * 60  # refuse messages signed too long ago (replays)
SECRET = web.AppKey("secret", str)
SEEN = web.AppKey("seen", set[str])


def verify(secret: str, msg_id: str, timestamp: str, body: bytes, signatures: str) -> bool:
    """True when one of the space-separated `v1,<sig>` values matches the secret."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    for candidate in signatures.split():
        version, _, sig = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(sig, expected):
            return True
    return False


def summary(event: dict[str, Any]) -> str:
    job = event["data"]
    line = (
        f"{event['timestamp']} {event['type']:<14} {job['id']} {job['operation']}:"
        f" {job['status']} {job['processed']}/{job['total_items']}"
        f" ({job['succeeded']} ok, {job['failed']} failed, {job['cancelled']} cancelled)"
    )
    if job.get("result_url"):
        line += f" results: {job['result_url']}"
    return line


async def receive(request: web.Request) -> web.Response:
    h = request.headers
    body = await request.read()
    msg_id, ts, sigs = h.get("webhook-id"), h.get("webhook-timestamp"), h.get("webhook-signature")
    if not (msg_id and ts and sigs and ts.isdigit()):
        return web.Response(status=400, text="missing webhook headers")
    if abs(time.time() - int(ts)) > TOLERANCE_S:
        return web.Response(status=400, text="timestamp outside tolerance")
    if not verify(request.app[SECRET], msg_id, ts, body, sigs):
        return web.Response(status=401, text="bad signature")
    seen = request.app[SEEN]
    if msg_id in seen:  # a retry of a message already handled: acknowledge, do nothing
        return web.Response(status=204)
    seen.add(msg_id)
    print(summary(json.loads(body)), flush=True)
    return web.Response(status=204)


def make_app(secret: str) -> web.Application:
    app = web.Application()
    app[SECRET] = secret
    app[SEEN] = set()  # ids already handled (a real receiver keeps them in its database)
    app.router.add_post("/webhooks", receive)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--secret", default=os.environ.get("WEBHOOK_SECRET", ""))
    args = parser.parse_args()
    if not args.secret.startswith("whsec_"):
        parser.error("give the whsec_ secret with --secret or WEBHOOK_SECRET")
    web.run_app(make_app(args.secret), host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
