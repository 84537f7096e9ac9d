"""The review page: flagged runs newest first, each run's evidence, and label buttons.

A Starlette app over one catalog (embedded or a Tiled server), read and written through
:class:`~pbi_bluesky.review.data.ReviewData`. Everything it serves is made here: HTML,
server-rendered SVG plots (matplotlib Agg) and a few lines of inline JavaScript that poll
``/api/flagged`` so new flags appear without a reload; no CDN, no JavaScript library. The
Tiled API key stays in this process: labels are posted to this server, which writes them
with its key; the key never appears in a page.

Routes: ``/`` (index; filters ``recipe``, ``since``, ``decision``, ``label``, ``model``),
``/api/flagged`` (the same rows as JSON), ``/run/{raw_uid}`` (a run's page),
``/run/{raw_uid}/curve.svg`` and ``/attribution.svg`` (its plots), ``POST
/run/{raw_uid}/label`` (form fields ``label``, ``note``, ``by``), ``/api/metadata/{uid}``
(a run's start and stop documents).
"""

from __future__ import annotations

import html
import json
import logging
from datetime import UTC
from typing import Any
from urllib.parse import parse_qs, urlencode

import numpy as np

from pbi_bluesky.review.data import FILTERS, LIMIT, ReviewData, normal_band

__all__ = ["ReviewData", "build_app", "normal_band"]

logger = logging.getLogger(__name__)

POLL_MS = 2000


# -- HTML -----------------------------------------------------------------------------------
_STYLE = """
body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse}
td,th{padding:.25em .6em;border-bottom:1px solid #ddd;text-align:left;font-size:.9em}
.fa{color:#06c}.defect{color:#c00}.est{color:#777;font-style:italic}
form.filters input,form.filters select{margin-right:.6em}.err{color:#c00}
"""

_POLL_JS = """
<script>
function esc(s){return String(s==null?'-':s).replace(/[&<>"]/g,
  c=>({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));}
function num(v){return v==null?'-':Number(v).toPrecision(3);}
async function poll(){
  try{
    const r=await fetch('/api/flagged'+location.search);
    if(r.ok){const rows=await r.json();
      document.getElementById('count').textContent=rows.length;
      document.getElementById('rows').innerHTML=rows.map(row).join('');}
  }catch(e){}
  setTimeout(poll,POLL_MS);
}
function row(r){
  const t=r.time?new Date(r.time*1000).toISOString().slice(0,19).replace('T',' '):'-';
  return '<tr class="flag"><td>'+esc(t)+'</td><td><a href="/run/'+encodeURIComponent(r.raw_uid)
   +'">'+esc(r.raw_uid.slice(0,8))+'</a></td><td>'+esc(r.sample)+'</td><td>'+esc(r.composition)
   +'</td><td>'+esc(r.flagged)+'/'+esc(r.frames)+'</td><td>'+num(r.max_score)+'</td><td>'
   +num(r.p_value)+'</td><td class="est">'+num(r.p_estimate)+'</td><td>'+esc(r.decision)
   +'</td><td>'+esc(r.label)+'</td><td>'+esc((r.model_sha256||'').slice(0,8))+'</td></tr>';
}
setTimeout(poll,POLL_MS);
</script>
""".replace("POLL_MS", str(POLL_MS))


def _e(value: Any) -> str:
    return "-" if value is None else html.escape(str(value))


def _num(value: Any) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "-"
    return "-" if not np.isfinite(v) else f"{v:.3g}"


def _time(epoch: Any) -> str:
    from datetime import datetime

    if not epoch:
        return "-"
    return datetime.fromtimestamp(float(epoch), tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{_STYLE}</style></head><body>{body}</body></html>")


def _row(r: dict[str, Any]) -> str:
    return (f"<tr class='flag'><td>{_time(r['time'])}</td><td><a href='/run/{_e(r['raw_uid'])}'>"
            f"{_e((r['raw_uid'] or '')[:8])}</a></td><td>{_e(r['sample'])}</td>"
            f"<td>{_e(r['composition'])}</td><td>{_e(r['flagged'])}/{_e(r['frames'])}</td>"
            f"<td>{_num(r['max_score'])}</td><td>{_num(r['p_value'])}</td>"
            f"<td class='est'>{_num(r['p_estimate'])}</td><td>{_e(r['decision'])}</td>"
            f"<td>{_e(r['label'])}</td><td>{_e((r['model_sha256'] or '')[:8])}</td></tr>")


def _index_html(rows: list[dict[str, Any]], failed: list[dict[str, Any]],
                filters: dict[str, str], where: str) -> str:
    from pbi_bluesky.store.labels import LABELS
    from pbi_bluesky.store.queries import DECISIONS

    def select(name: str, options: tuple[str, ...]) -> str:
        opts = "".join(f"<option{' selected' if filters.get(name) == o else ''}>{o}</option>"
                       for o in options)
        return f"{name} <select name='{name}'><option value=''>any</option>{opts}</select>"

    form = ("<form class='filters' method='get'>"
            f"recipe <input name='recipe' size='8' value='{_e(filters.get('recipe', ''))}'>"
            f"since <input name='since' size='16' placeholder='2026-11-24T08:00' "
            f"value='{_e(filters.get('since', ''))}'>"
            f"{select('decision', DECISIONS)}{select('label', (*LABELS, 'none'))}"
            f"model <input name='model' size='10' value='{_e(filters.get('model', ''))}'>"
            "<button>filter</button></form>")
    head = ("<tr><th>time (UTC)</th><th>raw run</th><th>sample</th><th>recipe</th>"
            "<th>flagged</th><th>max score</th><th>p (exact)</th><th>p (tail estimate)</th>"
            "<th>decision</th><th>label</th><th>model</th></tr>")
    fails = "".join(f"<li><a href='/run/{_e(f['raw_uid'])}'>{_e((f['raw_uid'] or '')[:8])}</a>"
                    f" {_e(f['sample'])}: {_e('; '.join(f['failures'][:3]) or 'no reason')}</li>"
                    for f in failed[:50])
    body = (f"<h1>Flagged runs</h1><p>{_e(where)}: <span id='count'>{len(rows)}</span> "
            f"flagged run(s) shown, newest first (at most {_e(filters.get('limit') or LIMIT)}"
            f": ?limit=N shows more); new flags appear without a reload. "
            f"p (exact) is the conformal p-value (floored at 1/(n+1)); p (tail estimate) "
            f"comes from an exponential fit to the top calibration scores.</p>{form}"
            f"<table><thead>{head}</thead><tbody id='rows'>"
            f"{''.join(_row(r) for r in rows)}</tbody></table>"
            + (f"<h2>Failed analyses</h2><ul class='err'>{fails}</ul>" if failed else "")
            + _POLL_JS)
    return _page("pbi review", body)


def _run_html(raw_uid: str, run: dict[str, Any], tiled: str | None, message: str = "") -> str:
    from pbi_bluesky.models.tail import tail_p_estimate
    from pbi_bluesky.store.labels import LABELS

    start, stop = run["start"], run["stop"]
    summary = stop.get("pbi_summary") or {}
    frames = run["frames"]
    tails = (start.get("calibration") or {}).get("tail") or {}
    tail = tails.get(start.get("expected_composition")) or tails.get("all")
    rows = []
    for f in frames:
        est = tail_p_estimate(tail, f.get("score"))
        rows.append(f"<tr><td>{_e(f.get('raw_seq_num'))}</td><td>{_e(f.get('status'))}</td>"
                    f"<td>{_num(f.get('score'))}</td><td>{_num(f.get('threshold'))}</td>"
                    f"<td>{_num(f.get('p_value'))}</td><td class='est'>{_num(est)}</td>"
                    f"<td>{_num(f.get('hyperscore'))}</td>"
                    f"<td>{_e(f.get('predicted_composition'))}</td>"
                    f"<td>{'yes' if f.get('is_anomaly') else 'no'}</td>"
                    f"<td class='err'>{_e(f.get('reason') or '')}</td></tr>")
    decision = run.get("decision") or {}
    label = run.get("label") or {}
    failed = summary.get("verdict") == "failed" or not run["has_curves"] or not frames
    if failed:
        reasons = summary.get("failures") or [f.get("reason") for f in frames
                                               if f.get("reason")]
        plots = ("<div class='err failed'><h2>Analysis failed</h2><ul>"
                 + "".join(f"<li>{_e(r)}</li>" for r in reasons[:20] or ["no reason recorded"])
                 + "</ul></div>")
    else:
        plots = (f"<h2>Most anomalous frame</h2><img class='plot' alt='I(q) and residual' "
                 f"src='/run/{_e(raw_uid)}/curve.svg'>")
        if run["attributions"]:
            plots += (f"<h2>Attribution</h2><img class='plot' alt='attribution bars' "
                      f"src='/run/{_e(raw_uid)}/attribution.svg'>")
    links = (f"<a href='/api/metadata/{_e(raw_uid)}'>raw run</a> · "
             f"<a href='/api/metadata/{_e(run['analysis_uid'])}'>analysis run</a>")
    if tiled:
        base = tiled.rstrip("/")
        links += (f" · in Tiled: <a href='{_e(base)}/metadata/runs/{_e(raw_uid)}'>raw</a>, "
                  f"<a href='{_e(base)}/metadata/runs/{_e(run['analysis_uid'])}'>analysis</a>")
    buttons = "".join(f"<button name='label' value='{v}'>{v}</button> " for v in LABELS)
    form = (f"<form method='post' action='/run/{_e(raw_uid)}/label' id='label-form'>"
            f"note <input name='note' size='30'> by <input name='by' size='10'> {buttons}"
            "</form>")
    body = (f"<p><a href='/'>&larr; flagged runs</a></p><h1>Run {_e(raw_uid)}</h1>"
            + (f"<p class='msg'>{_e(message)}</p>" if message else "")
            + f"<table class='summary'>"
            f"<tr><th>sample</th><td>{_e(start.get('sample'))} "
            f"(slot {_e(start.get('slot'))})</td></tr>"
            f"<tr><th>recipe</th><td>{_e(start.get('expected_composition'))}</td></tr>"
            f"<tr><th>time (UTC)</th><td>{_time(start.get('time'))}</td></tr>"
            f"<tr><th>verdict</th><td>{_e(summary.get('verdict'))}: {_e(summary.get('flagged'))}"
            f" of {_e(summary.get('frames'))} frame(s) flagged</td></tr>"
            f"<tr><th>max score</th><td>{_num(summary.get('max_score'))}</td></tr>"
            f"<tr><th>agent decision</th><td>{_e(decision.get('classification'))}"
            f" {_e(decision.get('reason') or '')}</td></tr>"
            f"<tr><th>rescan</th><td>{_e(start.get('rescan_of') or 'not a rescan')}; rescans: "
            f"{_e(', '.join(u[:8] for u in decision.get('rescan_uids') or []) or 'none')}</td></tr>"
            f"<tr><th>label</th><td id='label'>{_e(label.get('label'))} "
            f"{('by ' + _e(label.get('labelled_by'))) if label else ''} "
            f"{_e(label.get('note') or '')}</td></tr>"
            f"<tr><th>model</th><td>{_e((start.get('model_sha256') or '')[:12])} "
            f"{_e(start.get('model_path'))}</td></tr>"
            f"<tr><th>links</th><td>{links}</td></tr></table>"
            f"<h2>Label this flag</h2>{form}{plots}"
            "<h2>Frames</h2><table><tr><th>frame</th><th>status</th><th>score</th>"
            "<th>threshold</th><th>p (exact)</th><th>p (tail estimate)</th><th>HyperScore</th>"
            f"<th>predicted recipe</th><th>flagged</th><th>reason</th></tr>{''.join(rows)}"
            "</table>")
    return _page(f"run {raw_uid[:8]}", body)


def build_app(data: ReviewData) -> Any:
    """Build the Starlette application over ``data``.

    Parameters
    ----------
    data
        The catalog access (:class:`ReviewData`).
    """
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
    from starlette.routing import Route

    where = data.tiled or f"embedded catalog {data.data_dir or ''}".strip()

    def _filters(request: Request) -> dict[str, str]:
        return {k: request.query_params[k] for k in FILTERS if request.query_params.get(k)}

    def _bad(exc: Exception) -> Response:
        return HTMLResponse(_page("error", f"<p class='err'>{_e(exc)}</p>"), status_code=400)

    async def index(request: Request) -> Response:
        filters = _filters(request)
        try:
            rows = await run_in_threadpool(data.index, filters)
            failed = await run_in_threadpool(data.failed)
        except ValueError as exc:
            return _bad(exc)
        return HTMLResponse(_index_html(rows, failed, filters, where))

    async def api_flagged(request: Request) -> Response:
        try:
            rows = await run_in_threadpool(data.index, _filters(request))
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(rows)

    async def _run(request: Request, **parts: bool) -> tuple[str, dict[str, Any] | None]:
        raw_uid = request.path_params["raw_uid"]
        return raw_uid, await run_in_threadpool(lambda: data.run(raw_uid, **parts))

    def _missing(raw_uid: str) -> Response:
        return HTMLResponse(_page("not found", f"<p class='err'>no analysis of run "
                                  f"{_e(raw_uid)} in this catalog</p>"), status_code=404)

    async def run_page(request: Request) -> Response:
        try:
            raw_uid, run = await _run(request)
        except Exception as exc:  # noqa: BLE001 - say what went wrong, not a bare 500
            logger.exception("run page of %s failed", request.path_params["raw_uid"])
            return HTMLResponse(_page("error", f"<p class='err'>cannot read this run: "
                                      f"{_e(type(exc).__name__)}: {_e(exc)}</p>"),
                                status_code=503)
        if run is None:
            return _missing(raw_uid)
        return HTMLResponse(_run_html(raw_uid, run, data.tiled,
                                      request.query_params.get("message", "")))

    def _best_frame(run: dict[str, Any]) -> int | None:
        scores = [(f.get("score"), i) for i, f in enumerate(run["frames"])
                  if f.get("score") is not None and np.isfinite(f.get("score"))]
        return max(scores)[1] if scores else None

    async def curve(request: Request) -> Response:
        from pbi_bluesky.review.plots import curve_svg

        raw_uid, run = await _run(request, curves=True, attributions=False)
        if run is None or run["curves"] is None or (i := _best_frame(run)) is None:
            return _missing(raw_uid)
        c, f, start = run["curves"], run["frames"][i], run["start"]
        band = normal_band(start.get("model_path"), start.get("expected_composition"))
        svg = await run_in_threadpool(
            curve_svg, c["q"][i], c["intensity"][i], c["sigma"][i], band,
            f"frame {f.get('raw_seq_num')}: score {_num(f.get('score'))}, recipe "
            f"{start.get('expected_composition')}")
        return Response(svg, media_type="image/svg+xml")

    async def attribution(request: Request) -> Response:
        from pbi_bluesky.review.plots import attribution_svg

        raw_uid, run = await _run(request)
        if run is None or not run["attributions"]:
            return _missing(raw_uid)
        seq, values = max(run["attributions"].items(),
                          key=lambda kv: sum(abs(v) for v in kv[1].values()))
        svg = await run_in_threadpool(attribution_svg, values, f"frame {seq}")
        return Response(svg, media_type="image/svg+xml")

    async def post_label(request: Request) -> Response:
        from pbi_bluesky.store.labels import LabelError

        raw_uid = request.path_params["raw_uid"]
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        value = (form.get("label") or [""])[0]
        note = (form.get("note") or [""])[0] or None
        by = (form.get("by") or [""])[0] or None
        try:
            record = await run_in_threadpool(data.label, raw_uid, value, note, by)
        except LabelError as exc:
            return _bad(exc)
        message = f"labelled {record['label']} by {record['labelled_by']}"
        return RedirectResponse(f"/run/{raw_uid}?{urlencode({'message': message})}",
                                status_code=303)

    async def metadata(request: Request) -> Response:
        uid = request.path_params["uid"]

        def read() -> Any:
            runs = data.runs
            return dict(runs[uid].metadata) if uid in runs else None

        md = await run_in_threadpool(read)
        if md is None:
            return JSONResponse({"error": f"no run {uid}"}, status_code=404)
        return JSONResponse(json.loads(json.dumps(md, default=str)))

    return Starlette(routes=[
        Route("/", index), Route("/api/flagged", api_flagged),
        Route("/run/{raw_uid}", run_page), Route("/run/{raw_uid}/curve.svg", curve),
        Route("/run/{raw_uid}/attribution.svg", attribution),
        Route("/run/{raw_uid}/label", post_label, methods=["POST"]),
        Route("/api/metadata/{uid}", metadata),
    ])
