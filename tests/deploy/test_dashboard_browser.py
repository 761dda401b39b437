"""The built-in `/dashboard` page in a real headless Chromium against a real `om2p serve` under load: it loads,
draws every chart, keeps updating, fetches nothing but the server itself, and leaves a screenshot in
`test-artifacts/dashboard.png`."""

from __future__ import annotations

import json
import struct

import httpx
import pytest

POLL_MS = 300

# Series colours of server/static/dashboard.html, per canvas: a line drawn in that colour proves the chart
# plotted data (the axes and grid are grey).
SERIES_COLOURS = {
    "chart-latency": {"p50": (47, 126, 216), "p99": (217, 72, 95)},
    "chart-rate": {"rate": (42, 157, 98)},
    "chart-batch": {"mean": (138, 92, 208)},
    "chart-load": {"queued rows": (194, 24, 91)},  # drawn last, so visible even where in-flight is equal
}

# Counts pixels of each series colour below the legend strip, so the legend swatches do not count.
COUNT_SERIES_PIXELS = """
(() => {
  const colours = %s;
  const result = {};
  for (const [canvasId, series] of Object.entries(colours)) {
    const canvas = document.getElementById(canvasId);
    const top = Math.ceil(24 * (window.devicePixelRatio || 1));
    const data = canvas.getContext("2d").getImageData(0, top, canvas.width, canvas.height - top).data;
    result[canvasId] = {};
    for (const [name, [r, g, b]] of Object.entries(series)) {
      let count = 0;
      for (let i = 0; i < data.length; i += 4) {
        if (data[i + 3] > 128 && Math.abs(data[i] - r) < 40 && Math.abs(data[i + 1] - g) < 40
            && Math.abs(data[i + 2] - b) < 40) count++;
      }
      result[canvasId][name] = count;
    }
  }
  return result;
})()
"""

PAGE_STATE = """
(() => {
  const d = window.om2pDashboard;
  if (!d) return null;  // still navigating
  const text = (id) => document.getElementById(id).textContent;
  return {
    polls: d.polls,
    points: d.points.length,
    withLatency: d.points.filter((p) => p.p99 !== null).length,
    // The newest interval that saw requests (under load: nearly always the newest one).
    last: d.points.filter((p) => p.p99 !== null).pop() || null,
    lastError: d.lastError,
    model: text("model"),
    p99: text("stat-p99"),
    rate: text("stat-rate"),
    batch: text("stat-batch"),
    canvases: ["chart-latency", "chart-rate", "chart-batch", "chart-load"].map((id) => document.getElementById(id).toDataURL()),
  };
})()
"""


def test_dashboard_is_served_as_a_self_contained_page(om2p_server: str) -> None:
    response = httpx.get(f"{om2p_server}/dashboard", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert "<canvas" in html and 'fetch("metrics"' in html
    # Nothing from the internet: no absolute URLs in script or link tags.
    assert "http://" not in html and "https://" not in html and "<link" not in html


def test_dashboard_draws_and_updates_under_load(
    browser_page, om2p_server: str, act_load, poll_until, artifacts_dir
) -> None:
    page = browser_page
    with act_load() as load:
        page.call("Page.navigate", url=f"{om2p_server}/dashboard?interval={POLL_MS}&window=40")

        def enough_points():
            state = page.evaluate(PAGE_STATE)
            return state if state and state["withLatency"] >= 4 else None

        first = poll_until(enough_points, timeout_s=60, what="the dashboard to plot 4 latency points")
        drawn = page.evaluate(COUNT_SERIES_PIXELS % _js_colours())

        later = poll_until(
            lambda: (s := page.evaluate(PAGE_STATE)) and s["polls"] >= first["polls"] + 4 and s,
            timeout_s=60,
            what="four more polls of /metrics",
        )
        screenshot = page.screenshot(artifacts_dir / "dashboard.png")
    assert load.sent > 0 and not load.failures, load.failures[:5]

    assert not page.exceptions, page.exceptions
    assert first["lastError"] is None and later["lastError"] is None
    # Loads: the model line comes from om2p_model_info of this very server.
    assert "synthetic v1" in later["model"]
    # Draws: every series has a line in its colour, and the headline numbers are filled in.
    for canvas_id, series in drawn.items():
        for name, pixels in series.items():
            assert pixels >= 30, f"{canvas_id}: series {name} drew only {pixels} pixels"
    assert later["p99"].endswith(("µs", "ms", " s")) and later["rate"] != "–" and later["batch"] != "–"
    last = later["last"]
    assert last["rate"] > 0 and last["p99"] >= last["p50"] > 0 and last["batchMean"] >= 1
    # Updates: more points, and the pictures changed as new scrapes arrived.
    assert later["points"] > first["points"]
    assert any(a != b for a, b in zip(first["canvases"], later["canvases"], strict=True))
    # Self-contained: the browser asked the server for nothing but itself (the page and /metrics).
    foreign = [url for url in page.requests if not url.startswith(om2p_server)]
    assert not foreign, foreign
    assert any(url.startswith(f"{om2p_server}/metrics") for url in page.requests)
    # The screenshot is a real PNG of the page's size.
    header = screenshot.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    assert width >= 800 and height >= 600


def test_dashboard_quantiles_follow_prometheus(browser_page, om2p_server: str, poll_until) -> None:
    """The page's percentile of bucket increments is Prometheus' histogram_quantile: linear inside the bucket
    that holds the rank, and the last finite bound when the rank falls in +Inf."""
    page = browser_page
    page.call("Page.navigate", url=f"{om2p_server}/dashboard")
    poll_until(lambda: page.evaluate("Boolean(window.om2pDashboard)"), timeout_s=30, what="the page script")
    before = "[[0.001, 5], [0.01, 45], [Infinity, 50]]"
    after = "[[0.001, 15], [0.01, 135], [Infinity, 150]]"  # increments 10, 80 (cumulative 90), 10 (100)
    quantile = "window.om2pDashboard.quantile"
    # p50: rank 50 lies in (0.001, 0.01], 40 of its 80 observations in: 0.001 + 0.009 * 40 / 80.
    assert page.evaluate(f"{quantile}(0.5, {after}, {before})") == pytest.approx(0.0055)
    # p5: rank 5 in the first bucket, interpolated from 0.
    assert page.evaluate(f"{quantile}(0.05, {after}, {before})") == pytest.approx(0.0005)
    # p99: rank 99 only in +Inf: the highest finite bound.
    assert page.evaluate(f"{quantile}(0.99, {after}, {before})") == pytest.approx(0.01)
    # No new observations: no percentile (the chart leaves a gap).
    assert page.evaluate(f"{quantile}(0.5, {before}, {before})") is None


def _js_colours() -> str:
    colours = {
        canvas: {name: list(rgb) for name, rgb in series.items()} for canvas, series in SERIES_COLOURS.items()
    }
    return json.dumps(colours)
