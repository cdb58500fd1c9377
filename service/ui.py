"""The monitoring console in the browser: ``GET /ui`` and its pages, on Argus's own port.

Three pages: the overview (``/ui``: every served model, its live version and candidate,
health, predictions/s, realized accuracy beside the label-free estimate), a model's page
(``/ui/model/{name}``: figures over time, the drift table, histograms, the confusion
matrix, activate and rollback) and its versions (``/ui/model/{name}/versions``: cards,
a diff, the live history).

Nothing here computes a figure. The overview is rendered on the server from the same
calls that answer ``/models``, ``/monitoring`` and ``/monitoring/history``, so it shows
its numbers with JavaScript off; ``ui_assets/console.js`` then refreshes it and draws the
other pages from those JSON routes. Every string that comes from data (model, version,
feature and reason names) is escaped here with ``html.escape`` and set as text in the
browser, never as markup; the pages are served with a Content-Security-Policy that
allows no inline script and nothing from another origin.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from errors import StateError
from service.exposition import MetricsExposition
from service.handlers import ArgusCore
from service.history import history_document
from service.metrics import get_metrics
from service.validation import RequestError

ASSETS = Path(__file__).with_name("ui_assets")
MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}
RATE_POINTS_SECONDS = 60.0
"""The overview's predictions/s is the last history point of the live version within
this many seconds (or three cadences, if longer)."""


def routes(
    core: Callable[[], ArgusCore], exposition: Callable[[], MetricsExposition | None]
) -> list[Route]:
    """The console's routes over the worker's ``ArgusCore`` and ``MetricsExposition``
    (``core()`` raises a 503 ``RequestError`` while the worker starts)."""

    async def overview(request: Request) -> Response:
        try:
            rows = await asyncio.to_thread(_overview_rows, core(), exposition())
        except RequestError as exc:
            return _page("Argus", "overview", "", _message(exc.message), exc.status)
        except StateError as exc:
            message = f"the shared state is unavailable: {exc}"
            return _page("Argus", "overview", "", _message(message), 503)
        return _page("Argus: models", "overview", "", _overview_html(rows))

    async def model_page(request: Request) -> Response:
        name = request.path_params["name"]
        if not _served(core, name):
            return _unknown_model(name)
        return _page(f"Argus: {name}", "model", name, _model_html(name))

    async def versions_page(request: Request) -> Response:
        name = request.path_params["name"]
        if not _served(core, name):
            return _unknown_model(name)
        return _page(f"Argus: {name} versions", "versions", name, _versions_html(name))

    async def asset(request: Request) -> Response:
        file = request.path_params["file"]
        found = _asset(file)
        if found is None:  # a refusal like any other: JSON, counted
            get_metrics().invalid_requests.labels("http_404").inc()
            refusal = {"error": f"no console asset {file!r}", "reason": "http_404"}
            return JSONResponse(refusal, status_code=404, headers={"x-argus-reason": "http_404"})
        body, media_type, etag = found
        headers = {"etag": etag, "cache-control": "no-cache", "x-content-type-options": "nosniff"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(body, media_type=media_type, headers=headers)

    return [
        Route("/ui", overview, methods=["GET"]),
        Route("/ui/", overview, methods=["GET"]),
        Route("/ui/model/{name}", model_page, methods=["GET"]),
        Route("/ui/model/{name}/versions", versions_page, methods=["GET"]),
        Route("/ui/assets/{file}", asset, methods=["GET"]),
    ]


# -- data ------------------------------------------------------------------------------


def _unknown_model(name: str) -> HTMLResponse:
    """A page for a model not served here: a 404 counted like every other refusal."""
    get_metrics().invalid_requests.labels("unknown_model").inc()
    page = _page("Argus", "missing", "", _message(f"no model {name!r} is served here"), 404)
    page.headers["x-argus-reason"] = "unknown_model"
    return page


def _served(core: Callable[[], ArgusCore], name: str) -> bool:
    try:
        return name in core().fleet.names
    except RequestError:
        return False


def _overview_rows(core: ArgusCore, exposition: MetricsExposition | None) -> list[dict[str, Any]]:
    """Per served model: ``/models``'s document, ``/monitoring``'s (``None`` while no
    version serves) and the live version's last history point (``None`` without one)."""
    since = time.time() - max(RATE_POINTS_SECONDS, 3 * core.settings.history_seconds)
    rows = []
    for name in sorted(core.fleet.names):
        models = core.models(name)
        monitoring = None
        if exposition is not None and core.fleet.get(name).ready:
            try:
                monitoring = exposition.snapshot(None, name)
            except RequestError:
                monitoring = None
        point = None
        if models["live"] is not None:
            points = history_document(core.state, name, since, models["live"])["points"]
            point = points[-1] if points else None
        rows.append({"models": models, "monitoring": monitoring, "point": point})
    return rows


def _asset(file: str) -> tuple[bytes, str, str] | None:
    """A file of ``ui_assets`` by its bare name (nothing else is reachable)."""
    if "/" in file or "\\" in file or file.startswith("."):
        return None
    media_type = MEDIA_TYPES.get(Path(file).suffix)
    path = ASSETS / file
    if media_type is None or not path.is_file():
        return None
    body = path.read_bytes()
    return body, media_type, '"' + hashlib.sha256(body).hexdigest()[:16] + '"'


# -- HTML ------------------------------------------------------------------------------

esc = html.escape


def _page(title: str, page: str, model: str, main: str, status: int = 200) -> HTMLResponse:
    body = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<link rel="icon" href="/ui/assets/icon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/ui/assets/console.css">
<script src="/ui/assets/console.js" defer></script>
</head>
<body data-page="{esc(page)}" data-model="{esc(model)}">
<header class="top"><a class="brand" href="/ui">Argus</a><span class="sub">monitoring console</span>
<span class="status" id="status" role="status"></span></header>
<main>
{main}
</main>
</body>
</html>
"""
    return HTMLResponse(body, status_code=status, headers=HEADERS)


def _message(text: str) -> str:
    return f'<section class="card"><p class="error">{esc(text)}</p></section>'


def _model_href(name: str, suffix: str = "") -> str:
    return esc(f"/ui/model/{quote(name, safe='')}{suffix}")


FORMATS: dict[str, Callable[[float], str]] = {
    "pct1": lambda v: f"{v * 100:.1f}%",
    "pct2": lambda v: f"{v * 100:.2f}%",
    "f1": lambda v: f"{v:.1f}",
    "f3": lambda v: f"{v:.3f}",
    "int": lambda v: f"{v:.0f}",
}
"""The figures' display formats, as ``console.js``'s ``FORMATS`` writes them."""


def _value(doc: Any, path: str) -> Any:
    for key in path.split("."):
        if doc is None:
            return None
        doc = doc[int(key)] if isinstance(doc, list) else doc.get(key)
    return doc


def _figure(doc: Any, path: str, fmt: str, attr: str = "data-figure") -> str:
    """A figure as the browser marks it: its path in the JSON, its exact value, its text."""
    value = _value(doc, path)
    finite = isinstance(value, int | float) and math.isfinite(value)
    text = FORMATS[fmt](value) if finite else "—"
    raw = repr(value) if finite else ""
    marks = f'{attr}="{esc(path)}" data-fmt="{fmt}" data-value="{esc(raw)}"'
    return f'<span class="fig" {marks}>{esc(text)}</span>'


def _candidate(models: dict[str, Any]) -> str:
    c = models.get("candidate")
    if not c:
        return "—"
    return f"{esc(str(c['role']))} <code>{esc(str(c['version']))}</code> · {c['share'] * 100:g}%"


def _overview_html(rows: list[dict[str, Any]]) -> str:
    body = []
    for row in rows:
        models, mon, point = row["models"], row["monitoring"], row["point"]
        name = models["model"]
        ready = models["serving"] is not None
        health = (
            '<span class="badge ok" data-health="ready">ready</span>'
            if ready
            else '<span class="badge bad" data-health="not-ready">not ready</span>'
        )
        live = esc(str(models["live"] or "—"))
        body.append(
            f"""<tr data-model="{esc(name)}">
<th scope="row"><a href="{_model_href(name)}">{esc(name)}</a>
 <small><a href="{_model_href(name, "/versions")}">versions</a></small></th>
<td>{health}</td>
<td><code data-live-version>{live}</code></td>
<td data-candidate>{_candidate(models)}</td>
<td class="num">{_figure(point, "predictions_per_s", "f1", "data-history")}</td>
<td class="num">{_figure(mon, "performance.accuracy", "pct2")}
 <small>on {_figure(mon, "windows.labels", "int")} labels</small></td>
<td class="num">{_figure(mon, "estimated_accuracy", "pct2")}
 <small>on {_figure(mon, "windows.inputs", "int")} rows</small></td>
<td class="num">{_figure(mon, "drift.drift_share", "pct1")}</td>
<td class="num">{_figure(mon, "anomaly.ratio", "pct2")}</td>
</tr>"""
        )
    if not body:
        body.append('<tr><td colspan="9">No model is served.</td></tr>')
    rows_html = "\n".join(body)
    return f"""<section class="card">
<h1>Models</h1>
<div class="scroll"><table class="overview">
<thead><tr><th scope="col">Model</th><th scope="col">Health</th><th scope="col">Live version</th>
<th scope="col">Candidate</th><th scope="col" class="num">Predictions/s</th>
<th scope="col" class="num">Accuracy <small>(labelled)</small></th>
<th scope="col" class="num">Estimate <small>(label-free)</small></th>
<th scope="col" class="num">Drift share</th><th scope="col" class="num">Anomalies</th>
</tr></thead>
<tbody>
{rows_html}
</tbody></table></div>
<p class="note">Window figures of each live version, as <code>/monitoring</code> gives them;
predictions/s from the last point of <code>/monitoring/history</code>.
<span class="js-only">Refreshed every few seconds.</span></p>
</section>"""


def _model_html(name: str) -> str:
    return f"""<nav class="crumbs"><a href="/ui">All models</a> ›
<a href="{_model_href(name, "/versions")}">Versions of {esc(name)}</a></nav>
<section class="card head">
<h1>{esc(name)}</h1>
<div id="head" class="headline"></div>
<noscript><p class="note">This page draws its figures with JavaScript;
the <a href="/ui">overview</a> shows the headline numbers without it.</p></noscript>
</section>
<section class="card"><div id="kpis" class="kpis"></div></section>
<div class="grid">
<section class="card"><h2>Accuracy and label-free estimate</h2>
<div class="range"><label>Range <select id="range">
<option value="300">5 min</option><option value="3600" selected>1 h</option>
<option value="86400">24 h</option><option value="0">all</option></select></label></div>
<div id="chart-accuracy" class="chart"></div></section>
<section class="card"><h2>Drift share and anomaly share</h2>
<div id="chart-drift" class="chart"></div></section>
</div>
<section class="card hidden" id="candidate-card"><h2>Candidate</h2>
<div id="candidate"></div></section>
<div class="grid">
<section class="card"><h2>Input drift by feature</h2>
<p class="note">Click a column to sort, a feature to draw its histogram.</p>
<div id="drift-summary"></div><div id="drift-table" class="scroll tall"></div></section>
<section class="card"><h2 id="feature-title">Feature histogram</h2>
<div id="feature-hist" class="chart"><p class="note">Pick a feature in the drift table.</p></div>
</section>
</div>
<div class="grid">
<section class="card"><h2>Anomaly scores</h2><div id="scores" class="chart"></div></section>
<section class="card"><h2>Label delay</h2><div id="delay" class="chart"></div></section>
</div>
<div class="grid">
<section class="card"><h2>Confusion matrix</h2><div id="confusion" class="chart"></div></section>
<section class="card"><h2>F1 by class</h2><div id="f1" class="chart"></div></section>
</div>
<section class="card" id="admin-card"><h2>Switch the live version</h2>
<form id="admin" class="admin" autocomplete="off">
<label>Admin token <input type="password" id="token" autocomplete="off" spellcheck="false"></label>
<label>Version <select id="activate-version"></select></label>
<button type="button" id="activate">Activate</button>
<button type="button" id="rollback">Roll back</button>
</form>
<p id="admin-message" class="message" role="status"></p>
<p class="note">The token is sent once as a bearer header and kept nowhere.</p>
</section>"""


def _versions_html(name: str) -> str:
    return f"""<nav class="crumbs"><a href="/ui">All models</a> ›
<a href="{_model_href(name)}">{esc(name)}</a></nav>
<section class="card head"><h1>Versions of {esc(name)}</h1>
<noscript><p class="note">This page draws the model cards with JavaScript.</p></noscript>
<p class="note">In creation order, oldest first; open one to read its card.</p>
<div id="versions"></div></section>
<section class="card"><h2>Compare two versions</h2>
<form id="diff-form" class="admin"><label>A <select id="diff-a"></select></label>
<label>B <select id="diff-b"></select></label>
<label class="check"><input type="checkbox" id="diff-only"> only differences</label></form>
<div id="diff" class="scroll"></div></section>
<section class="card"><h2>Live history</h2><div id="history" class="scroll"></div></section>"""
