"""The labelling web app and its REST API (``assay serve``).

:func:`create_app` builds the FastAPI application over a workspace; :class:`ServerThread` runs it under
uvicorn in a background thread (tests, benchmarks). The web stack is an optional extra: ``assay[server]``.
"""

from __future__ import annotations

__all__ = ["THUMB_SIZES", "ServerConfig", "ServerThread", "create_app", "thumbnail_path"]


def __getattr__(name: str):  # lazy: importing assay.server must not import FastAPI
    if name in ("create_app", "ServerThread", "ServerConfig"):
        from . import app

        return getattr(app, name)
    if name in ("thumbnail_path", "THUMB_SIZES"):
        from . import thumbnails

        return getattr(thumbnails, name)
    raise AttributeError(name)
