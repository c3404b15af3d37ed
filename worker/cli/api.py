"""``cxr-triage api``: the read-only audit HTTP API and web page."""

from __future__ import annotations

import argparse
import sys

from worker.settings import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "api",
        help="serve the read-only audit API (OpenAPI) and its web page",
        description="Serve /api/... (bearer token CXR_API_TOKEN required), /openapi.json, "
        "/api/docs and a study browser at / on CXR_METRICS_BIND:CXR_API_PORT.",
    )
    p.add_argument("--port", type=int, help="override CXR_API_PORT")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from worker.api import create_app
    from worker.db.engine import make_session_factory, open_database

    try:
        app = create_app(settings, make_session_factory(open_database(settings, read_only=True)))
    except ValueError as exc:
        print(f"cxr-triage api: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(
        app,
        host=settings.observability.metrics_bind,
        port=args.port or settings.api.api_port,
        log_level=settings.observability.log_level.lower(),
        access_log=False,  # worker.api logs each request without its query string
    )
    return 0
