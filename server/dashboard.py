"""`GET /dashboard`: a live page of this server's latency, request rate and batch size, no Grafana needed.

The page is one self-contained HTML file (`server/static/dashboard.html`, no CDN): its script polls the
server's own `/metrics` and draws the differences between successive scrapes on canvases, computing
percentiles from the histogram buckets the way Prometheus' `histogram_quantile` does.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(tags=["monitoring"])


@cache
def dashboard_html() -> str:
    return resources.files("server.static").joinpath("dashboard.html").read_text(encoding="utf-8")


@router.get("/dashboard", response_class=HTMLResponse, summary="Live latency, rate and batch-size page")
def dashboard() -> HTMLResponse:
    # no-store: an upgraded server must not be shown with a stale cached script.
    return HTMLResponse(dashboard_html(), headers={"Cache-Control": "no-store"})
