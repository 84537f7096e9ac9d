"""The review page through Starlette's TestClient: index, run page, plots, labels."""

from __future__ import annotations

import re

import pytest
from starlette.testclient import TestClient

from pbi_bluesky.review import ReviewData, build_app, normal_band
from pbi_bluesky.store import labels_of, open_runs
from tests.review.conftest import RECIPE


@pytest.fixture(scope="module")
def client(review_catalog):
    # one catalog for the module (a copy would point at the original's array files): only
    # the last test labels, and only run a
    folder, bundle, uids = review_catalog
    return TestClient(build_app(ReviewData(data_dir=folder))), folder, bundle, uids


def test_index_lists_flags_newest_first_with_filters(client):
    web, _, _, uids = client
    page = web.get("/")
    assert page.status_code == 200
    shown = re.findall(r"href='/run/([^']+)'", page.text)
    # flagged a then b: b first; the normal run is not a flag; the failed one is listed apart
    assert shown[:2] == [uids["b"], uids["a"]] and uids["normal"] not in shown
    assert "Failed analyses" in page.text and "PONI file missing" in page.text
    assert "<script src" not in page.text and "http" not in page.text.split("<script>")[1]
    rows = web.get("/api/flagged").json()
    assert [r["raw_uid"] for r in rows] == [uids["b"], uids["a"]]
    assert rows[0]["p_estimate"] < rows[1]["p_estimate"]  # b scored higher: ranks first
    assert web.get("/api/flagged", params={"recipe": "0:100"}).json() == []
    assert len(web.get("/api/flagged", params={"recipe": RECIPE}).json()) == 2
    assert uids["b"] in [r["raw_uid"] for r in web.get("/api/flagged",
                                                        params={"label": "none"}).json()]
    assert web.get("/api/flagged", params={"model": "feedc0de"}).json()
    assert web.get("/api/flagged", params={"model": "00"}).json() == []
    assert web.get("/api/flagged", params={"label": "maybe"}).status_code == 400
    # the newest only, sorted by the server (the index at 10^4 runs reads one page)
    assert [r["raw_uid"] for r in web.get("/api/flagged", params={"limit": 1}).json()] == [
        uids["b"]]
    assert web.get("/api/flagged", params={"limit": "x"}).status_code == 400


def test_run_page_plots_and_failed_reason(client):
    web, _, bundle, uids = client
    page = web.get(f"/run/{uids['b']}")
    assert page.status_code == 200
    for text in ("curve.svg", "attribution.svg", "HyperScore", "predicted recipe",
                 "agent decision", "rescan", "raw run", "analysis run", "p (tail estimate)"):
        assert text in page.text, text
    svg = web.get(f"/run/{uids['b']}/curve.svg")
    assert svg.headers["content-type"].startswith("image/svg") and b"<svg" in svg.content
    assert b"normal band" in svg.content  # the band from the bundle, not the fallback text
    assert b"<svg" in web.get(f"/run/{uids['b']}/attribution.svg").content
    band = normal_band(str(bundle), RECIPE)
    assert band["reference"].shape == band["scatter"].shape and (band["scatter"] > 0).all()
    assert normal_band(str(bundle), "no such recipe") is None
    failed = web.get(f"/run/{uids['failed']}")
    assert "Analysis failed" in failed.text and "PONI file missing" in failed.text
    assert "curve.svg" not in failed.text
    assert web.get("/run/not-a-run").status_code == 404
    meta = web.get(f"/api/metadata/{uids['b']}").json()
    assert meta["start"]["uid"] == uids["b"]


def test_run_page_reads_no_curves_and_few_nodes(client):
    web, folder, _, uids = client
    data = ReviewData(data_dir=folder)
    sent = []
    data.runs.context.http_client.event_hooks["request"].append(sent.append)
    run = data.run(uids["b"])
    # the page: one search (analysis, labels, decisions), the stream, its keys, the frame
    # table and the attribution table; the curves are read for curve.svg only
    assert run["has_curves"] and run["curves"] is None and run["frames"] and \
        run["attributions"]
    assert not [r for r in sent if "/array/" in r.url.path], [str(r.url) for r in sent]
    assert len(sent) <= 8, [str(r.url) for r in sent]
    assert data.run(uids["b"], curves=True)["curves"]["intensity"].shape[0] == \
        len(run["frames"])


def test_label_posted_by_the_form_lands_in_the_catalog(client):
    web, folder, _, uids = client
    posted = web.post(f"/run/{uids['a']}/label", data={"label": "false-alarm",
                                                      "note": "drift", "by": "eve"},
                      follow_redirects=False)
    assert posted.status_code == 303, posted.text
    assert "labelled false-alarm" in web.get(posted.headers["location"]).text
    label = labels_of(open_runs(data_dir=folder))[uids["a"]]
    assert (label["label"], label["note"], label["labelled_by"]) == ("false-alarm", "drift",
                                                                      "eve")
    assert [r["raw_uid"] for r in web.get("/api/flagged",
                                          params={"label": "false-alarm"}).json()] == [uids["a"]]
    bad = web.post(f"/run/{uids['normal']}/label", data={"label": "defect"})
    assert bad.status_code == 400 and "never flagged" in bad.text
