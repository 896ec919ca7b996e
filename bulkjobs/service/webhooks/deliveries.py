"""Webhook use cases for the HTTP layer: vet a subscription at submit, list a job's
messages with their attempts, redeliver one."""

from __future__ import annotations

import attrs

from ...errors import BulkJobsError
from ...models import Job, utcnow
from ...outbox import Delivery, NewWebhook, WebhookSubscription
from ...store import WebhookStore
from .dispatcher import WebhookDispatcher
from .subscription import WebhookSpec
from .targets import FORBIDDEN_DETAIL, ForbiddenTarget, check_target, port_problem


@attrs.frozen
class DeliveryPage:
    subscription: WebhookSubscription | None
    data: list[Delivery]
    next_after: int | None


class WebhookService:
    """What the web layer may ask about webhooks; jobs are looked up by the caller."""

    def __init__(
        self,
        store: WebhookStore,
        dispatcher: WebhookDispatcher,
        *,
        allow_private: bool,
        progress_interval_s: float,
    ) -> None:
        self._store = store
        self._dispatcher = dispatcher
        self._allow_private = allow_private
        self._progress_interval_ms = int(progress_interval_s * 1000)

    async def vet(self, spec: WebhookSpec | None) -> NewWebhook | None:
        """The subscription to store with a job, once its target has passed the checks."""
        if spec is None:
            return None
        if not self._dispatcher.config.keys:
            raise BulkJobsError(
                "webhooks_not_configured",
                "This server has no webhook signing secret (BULKJOBS_WEBHOOK_SECRETS).",
            )
        await self._check(spec.url)
        return NewWebhook(spec.url, spec.events, self._progress_interval_ms)

    async def _check(self, url: str) -> None:
        port = port_problem(url, self._dispatcher.config.allowed_ports)
        if port is not None:
            raise BulkJobsError("webhook_url_forbidden", port, pointer="/webhook/url")
        try:
            await check_target(url, self._allow_private)
        except ForbiddenTarget:
            # generic on purpose: naming the address would make this a DNS oracle
            raise BulkJobsError(
                "webhook_url_forbidden", FORBIDDEN_DETAIL, pointer="/webhook/url"
            ) from None
        except (OSError, TimeoutError):
            raise BulkJobsError(
                "webhook_url_unresolvable",
                "The webhook URL's host does not resolve.",
                pointer="/webhook/url",
            ) from None

    async def list(self, job: Job, after_pk: int, limit: int) -> DeliveryPage:
        """A page of the job's messages, oldest first, each with all its attempts."""
        page = await self._store.deliveries(job.pk, after_pk=after_pk, limit=limit + 1)
        data = list(page.data[:limit])
        more = len(page.data) > limit
        return DeliveryPage(page.subscription, data, data[-1].message.pk if more else None)

    async def redeliver(self, job: Job, msg_id: str) -> Delivery:
        """Send a message again now (it keeps its id); re-enables a stopped subscription."""
        if not await self._store.redeliver(job.pk, msg_id, utcnow()):
            raise BulkJobsError(
                "webhook_message_not_found", f"Job {job.id} has no webhook message {msg_id!r}."
            )
        self._dispatcher.wake()
        page = await self._store.deliveries(job.pk, after_pk=0, limit=1, message_id=msg_id)
        return page.data[0]
