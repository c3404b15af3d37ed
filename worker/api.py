"""Read-only audit HTTP API (FastAPI, OpenAPI at ``/openapi.json``) and the page over it.

Every ``/api`` route needs ``Authorization: Bearer <CXR_API_TOKEN>``; patient identifiers never
leave without it. The page at ``/`` is static and calls the API with the token the user enters.
"""

from __future__ import annotations

import hmac
import io
import logging
import time
from datetime import datetime, timedelta
from importlib import resources
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from worker.audit import (
    StudyFilter,
    list_rejections,
    list_studies,
    parse_when,
    reconcile,
    timeline,
)
from worker.db.models import ProducedObject, Study
from worker.settings import Settings

logger = logging.getLogger(__name__)

# Filters are matched against stored DICOM strings: printable, at most 64 characters (LO/UI).
# Anything else (a NUL byte would be a PostgreSQL error) is refused with 422, not a 500.
Text = Annotated[str | None, Query(max_length=64, pattern=r"^[^\x00-\x1f\x7f]*$")]
StudyUID = Annotated[str, PathParam(max_length=64, pattern=r"^[0-9.]+$")]
# Deep pages cost a scan of everything before them; 10,000 x 500 rows is past any audit.
MAX_PAGE = 10_000


When = Annotated[str | None, Query(max_length=40, description="date/time or an age: 30m, 12h, 7d")]


def _when(text: str | None) -> datetime | None:
    """Times as the command line takes them (one parser: worker.audit.parse_when)."""
    if text is None:
        return None
    try:
        return parse_when(text)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc


def create_app(settings: Settings, sessions: sessionmaker[Session]) -> FastAPI:
    """Build the API app. Raises ValueError if no token is configured (it never runs open)."""
    token = settings.api.api_token
    if not token:
        raise ValueError("set CXR_API_TOKEN: the audit API never runs without authentication")
    app = FastAPI(
        title="cxr-triage audit API", version="1", docs_url="/api/docs", openapi_url="/openapi.json"
    )

    expected = token.encode()

    @app.middleware("http")
    async def access_log(request: Request, call_next: Any) -> Response:
        # Our own access line, in place of uvicorn's: the path without its query string, which
        # may carry a patient ID or an accession number.
        start = time.perf_counter()
        response: Response = await call_next(request)
        logger.info(
            "%s %s %d %.0f ms",
            request.method,
            request.url.path,
            response.status_code,
            (time.perf_counter() - start) * 1000,
        )
        return response

    def authorised(authorization: Annotated[str | None, Header()] = None) -> None:
        scheme, _, given = (authorization or "").partition(" ")
        # Compared as bytes: a header may hold any Latin-1 text, and compare_digest refuses a
        # non-ASCII str (a 500 before authentication).
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.encode("utf-8", "surrogateescape"), expected
        ):
            raise HTTPException(
                401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
            )

    auth = [Depends(authorised)]

    @app.get("/api/studies", dependencies=auth, summary="List studies, newest first")
    def studies(
        since: When = None,
        until: When = None,
        state: Text = None,
        label: Text = None,
        band: Text = None,
        priority: Text = None,
        calling_ae: Text = None,
        accession_number: Text = None,
        patient_id: Text = None,
        model_version: Text = None,
        page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1,
        page_size: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> dict[str, Any]:
        f = StudyFilter(
            since=_when(since),
            until=_when(until),
            state=state,
            label=label,
            band=band,
            priority=priority,
            calling_ae=calling_ae,
            accession_number=accession_number,
            patient_id=patient_id,
            model_version=model_version,
            limit=page * page_size + 1,
        )
        with sessions() as s:
            rows = list_studies(s, f)
        start = (page - 1) * page_size
        items = rows[start : start + page_size]
        return {
            "items": items,
            "page": page,
            "page_size": page_size,
            "has_next": len(rows) > start + page_size,
        }

    @app.get("/api/studies/{study_uid}", dependencies=auth, summary="A study's timeline")
    def show(study_uid: StudyUID) -> dict[str, Any]:
        with sessions() as s:
            story = timeline(s, study_uid)
        if story is None:
            raise HTTPException(404, f"no study {study_uid}")
        return story

    @app.get(
        "/api/studies/{study_uid}/heatmaps/{index}.png",
        dependencies=auth,
        summary="The study's n-th Grad-CAM SC as PNG",
        response_class=Response,
    )
    def heatmap(study_uid: StudyUID, index: Annotated[int, PathParam(ge=0, le=10_000)]) -> Response:
        import pydicom
        from PIL import Image

        with sessions() as s:
            objects = s.scalars(
                select(ProducedObject)
                .join(Study, Study.id == ProducedObject.study_id)
                .where(
                    Study.study_instance_uid == study_uid,
                    ProducedObject.kind == "sc",
                    ProducedObject.revision == Study.revision,
                )
                .order_by(ProducedObject.id)
            ).all()
        if not 0 <= index < len(objects):
            raise HTTPException(404, f"study {study_uid} has no heatmap {index}")
        ds = pydicom.dcmread(settings.storage.outputs_dir / objects[index].path)
        buf = io.BytesIO()
        Image.fromarray(ds.pixel_array).save(buf, format="PNG")
        return Response(buf.getvalue(), media_type="image/png")

    @app.get("/api/reconcile", dependencies=auth, summary="Instances never answered")
    def unaccounted(
        since: Annotated[
            str, Query(max_length=40, description="date/time or an age: 30m, 12h, 7d")
        ],
        grace_minutes: Annotated[float, Query(ge=0, le=527_040, allow_inf_nan=False)] = 15.0,
    ) -> dict[str, Any]:
        start = _when(since)
        assert start is not None
        with sessions() as s:
            items = reconcile(s, start, timedelta(minutes=grace_minutes))
        return {"items": items, "ok": not items}

    @app.get("/api/rejections", dependencies=auth, summary="What the node refused, and why")
    def rejections(
        since: When = None, limit: Annotated[int, Query(ge=1, le=10_000)] = 100
    ) -> dict[str, Any]:
        with sessions() as s:
            items = list_rejections(s, since=_when(since), limit=limit)
        return {"items": items}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return resources.files("worker.web").joinpath("index.html").read_text()

    return app
