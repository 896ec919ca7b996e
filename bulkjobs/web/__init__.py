"""The HTTP layer: aiohttp routes, problem responses, the app factory."""

from .app import create_app

__all__ = ["create_app"]
