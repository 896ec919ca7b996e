"""Signed, durable, retried webhooks: subscription at submit, an outbox written with
job transitions, and a dispatcher that delivers it."""

from ...outbox import Delivery
from .deliveries import DeliveryPage, WebhookService
from .dispatcher import DeliveryStats, DispatcherConfig, WebhookDispatcher
from .subscription import WebhookSpec, parse_webhook

__all__ = [
    "Delivery",
    "DeliveryPage",
    "DeliveryStats",
    "DispatcherConfig",
    "WebhookDispatcher",
    "WebhookService",
    "WebhookSpec",
    "parse_webhook",
]
