"""The public API for registering bulk operations: item types, handlers, options.

    registry = Registry()

    @registry.operation("tag_records", item_type=Tag, batch_size=200)
    async def tag(item: Tag, ctx: ItemContext) -> dict | None: ...

A handler either works one item (`operation`) or a list of items (`batch_operation`).
A plain `def` handler runs in a thread so it never blocks the event loop. Raising
`ItemFailed` fails the item with its code; `RetryableItemError` is retried under the
operation's `RetryPolicy`; any other exception fails the item as `internal_error`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import inspect
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import attrs

from .itemtypes import ItemType, item_schema

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


class ItemFailed(Exception):
    """Raise from a handler to fail one item (or a whole batch) with a stable code."""

    retryable = False

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class RetryableItemError(ItemFailed):
    """A transient failure: the item is retried under the operation's retry policy."""

    retryable = True


@attrs.frozen
class RetryPolicy:
    """Attempts and exponential backoff for `RetryableItemError`."""

    max_attempts: int = attrs.field(default=3, validator=attrs.validators.ge(1))
    initial_backoff_s: float = attrs.field(default=0.05, validator=attrs.validators.ge(0))
    max_backoff_s: float = attrs.field(default=5.0, validator=attrs.validators.ge(0))
    multiplier: float = attrs.field(default=2.0, validator=attrs.validators.ge(1))

    def backoff_s(self, attempt: int) -> float:
        """Delay before attempt `attempt + 1` (attempts count from 1)."""
        return float(
            min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        )


def _to_retry_policy(value: RetryPolicy | dict[str, Any]) -> RetryPolicy:
    return value if isinstance(value, RetryPolicy) else RetryPolicy(**value)


@attrs.frozen
class ItemContext:
    """What a handler knows about the item it is working."""

    job_id: str
    index: int
    attempt: int

    @property
    def idempotency_key(self) -> str:
        """Stable across re-deliveries: delivery is at-least-once across crashes."""
        return f"{self.job_id}:{self.index}"


@attrs.frozen
class BatchContext:
    """What a batch handler knows: one context per item, in the same order."""

    job_id: str
    items: tuple[ItemContext, ...]


@attrs.frozen
class OperationOptions:
    """Per-operation limits and policies; every field is shown by GET /operations."""

    batch_size: int = attrs.field(default=100, validator=attrs.validators.in_(range(1, 10_001)))
    concurrency: int | None = attrs.field(default=None)
    timeout_s: float | None = None
    retry: RetryPolicy = attrs.field(factory=RetryPolicy, converter=_to_retry_policy)
    max_failed_ratio: float | None = None
    max_items: int | None = None
    description: str = ""
    item_error_codes: dict[str, str] = attrs.field(factory=dict)

    @concurrency.validator
    def _check_concurrency(self, _attr: attrs.Attribute[int | None], value: int | None) -> None:
        if value is not None and value < 1:
            raise ValueError("concurrency must be >= 1")


@attrs.frozen
class Operation:
    """A registered operation: its name, item type, handler and options."""

    name: str
    item_type: type[Any]
    handler: Callable[..., Any]
    options: OperationOptions
    is_batch: bool
    is_async: bool
    schema: dict[str, Any]
    validator: ItemType

    def describe(self) -> dict[str, Any]:
        """The public description served by GET /operations."""
        o = self.options
        return {
            "name": self.name,
            "description": o.description,
            "item_schema": self.schema,
            "limits": {
                "batch_size": o.batch_size,
                "concurrency": o.concurrency,
                "timeout_s": o.timeout_s,
                "max_items": o.max_items,
                "max_failed_ratio": o.max_failed_ratio,
                "retry": attrs.asdict(o.retry),
            },
            "item_error_codes": o.item_error_codes,
        }


@attrs.frozen
class LifespanInfo:
    """Handed to lifespan hooks: where the service keeps its data.

    On SQLite, `db_path` is the file and `db_url` is empty; on PostgreSQL, `db_url` is
    the `postgresql://` URL (its password, if any, comes from the environment, as the
    service's does) and `db_path` is empty. Built from the `--db` setting either way.
    """

    db_path: str
    db_url: str = ""

    def __attrs_post_init__(self) -> None:
        if not self.db_url and self.db_path.startswith(("postgres://", "postgresql://")):
            object.__setattr__(self, "db_url", self.db_path)
            object.__setattr__(self, "db_path", "")

    @property
    def is_postgres(self) -> bool:
        return bool(self.db_url)


Lifespan = Callable[[LifespanInfo], AbstractAsyncContextManager[None]]


class Registry:
    """Named operations plus lifespan hooks for the resources their handlers use."""

    def __init__(self) -> None:
        self._operations: dict[str, Operation] = {}
        self._lifespans: list[Lifespan] = []

    def operation(self, name: str, *, item_type: type[Any], **options: Any) -> Callable[[F], F]:
        """Register a handler `(item, ctx) -> result | None` for one item at a time."""
        return self._register(name, item_type, is_batch=False, options=options)

    def batch_operation(
        self, name: str, *, item_type: type[Any], **options: Any
    ) -> Callable[[F], F]:
        """Register a handler `(items, ctx) -> list[result | ItemFailed]` for a batch."""
        return self._register(name, item_type, is_batch=True, options=options)

    def lifespan(self, fn: Lifespan) -> Lifespan:
        """Register an async context manager factory run around the service's life."""
        self._lifespans.append(fn)
        return fn

    def get(self, name: str) -> Operation | None:
        return self._operations.get(name)

    @property
    def operations(self) -> Sequence[Operation]:
        return list(self._operations.values())

    @property
    def lifespans(self) -> Sequence[Lifespan]:
        return list(self._lifespans)

    def _register(
        self, name: str, item_type: type[Any], *, is_batch: bool, options: dict[str, Any]
    ) -> Callable[[F], F]:
        if name in self._operations:
            raise ValueError(f"operation {name!r} is already registered")
        opts = OperationOptions(**options)

        def decorator(fn: F) -> F:
            self._operations[name] = Operation(
                name=name,
                item_type=item_type,
                handler=fn,
                options=opts,
                is_batch=is_batch,
                is_async=inspect.iscoroutinefunction(fn),
                schema=item_schema(item_type),
                validator=ItemType(item_type),
            )
            return fn

        return decorator


async def call_handler(
    fn: Callable[..., Awaitable[T] | T],
    is_async: bool,
    *args: Any,
    threads: concurrent.futures.Executor | None = None,
) -> T:
    """Await an async handler, or run a sync one in a thread (of `threads` when given)."""
    if is_async:
        return await fn(*args)  # type: ignore[no-any-return,misc]
    if threads is None:
        return await asyncio.to_thread(fn, *args)  # type: ignore[arg-type]
    return await asyncio.wrap_future(submit_in_thread(threads, fn, *args))  # type: ignore[arg-type]


def submit_in_thread(
    threads: concurrent.futures.Executor, fn: Callable[..., T], *args: Any
) -> concurrent.futures.Future[T]:
    """Start `fn(*args)` on `threads` in a copy of the caller's context, as `to_thread` does."""
    return threads.submit(contextvars.copy_context().run, fn, *args)


def load_registry(spec: str) -> Registry:
    """Import `module:attribute` and return the `Registry` it names."""
    import importlib

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--app must look like 'module:registry', got {spec!r}")
    registry = getattr(importlib.import_module(module_name), attr)
    if callable(registry) and not isinstance(registry, Registry):
        registry = registry()
    if not isinstance(registry, Registry):
        raise TypeError(f"{spec} is not a bulkjobs Registry")
    return registry
