"""``pbi rescore`` on a Dask LocalCluster (2 worker processes) against a Tiled server:
new analysis runs linked to the raw runs and tagged with the model's sha256, the same scores
as the live scorer, resumable, invisible to ``pbi flagged``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from pbi_bluesky.testing.services import TiledServer
from tests.bus.runs import cell_run, sample_md, shots
from tests.live.docs import feed, run_docs


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = TiledServer(tmp_path_factory.mktemp("tiled-rescore")).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def archive(server, bus_instrument, bus_files, core_kwargs):
    """An empty-cell run and two sample runs in Tiled, and the live scorer's verdicts."""
    from bluesky_tiled_plugins import TiledWriter

    from pbi_bluesky.live import LiveScorer
    from pbi_bluesky.store import runs_container

    runs = runs_container(server.client())
    writer = TiledWriter(runs)
    rng = np.random.default_rng(21)
    poni = bus_files["poni_text"]
    raws = [cell_run(bus_instrument, rng, poni)]
    raws.append(run_docs(sample_md(poni, sample="a"), shots(bus_instrument, rng, 6)))
    raws.append(run_docs(sample_md(poni, sample="b", composition="25:75"),
                         shots(bus_instrument, rng, 4, recipe="25:75")))
    live = LiveScorer(**core_kwargs)
    try:
        for _uid, docs in raws:
            feed(writer, docs)
            feed(live, docs)
        assert live.flush(120)
        verdicts = {uid: {r.raw_seq_num: r for r in live.channel.results(uid)}
                    for uid, _ in raws}
    finally:
        live.close()
    return runs, [uid for uid, _ in raws], verdicts


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster

    c = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                     dashboard_address="127.0.0.1:0")
    client = Client(c)
    yield client
    client.close()
    c.close()


def _job(server, bus_files, bus_instrument):
    from pbi_bluesky.rescore import RescoreJob

    return RescoreJob(str(bus_files["model"]), server.uri, server.api_key,
                      {"mask": str(bus_files["mask"]), "dark": str(bus_files["dark"]),
                       "npt": bus_instrument.npt})


def _rescored(runs, sha):
    from tiled.queries import Key

    found = runs.search(Key("pbi_rescore") == True).search(  # noqa: E712
        Key("model_sha256") == sha)
    return {found[u].metadata["start"]["rescore_of"]: found[u] for u in list(found)}


def test_rescore_on_a_dask_cluster_matches_the_live_scorer_and_resumes(
        server, archive, cluster, bus_files, bus_instrument):
    from pbi_bluesky.models import load_bundle
    from pbi_bluesky.rescore import rescore
    from pbi_bluesky.store import flagged_runs

    runs, uids, verdicts = archive
    job = _job(server, bus_files, bus_instrument)
    flagged_before = flagged_runs(runs)
    summary = rescore(job, cluster, progress=False)
    sha = load_bundle(bus_files["model"]).bundle_info["model_sha256"]
    assert summary["model_sha256"] == sha and summary["failed"] == {}
    assert summary["selected"] == 3 and len(summary["rescored"]) == 3
    done = _rescored(runs, sha)
    assert set(done) == set(uids)
    for uid in uids:
        run = done[uid]
        start = run.metadata["start"]
        assert start["raw_uid"] == uid and "pbi_analysis" not in start
        table = run["pbi_anomaly"].read()
        seqs = [int(s) for s in np.asarray(table["raw_seq_num"])]
        assert sorted(seqs) == sorted(verdicts[uid])
        for i, seq in enumerate(seqs):
            ref = verdicts[uid][seq]
            assert str(np.asarray(table["status"])[i]) == ref.status
            score = float(np.asarray(table["score"])[i])
            assert (np.isnan(score) and np.isnan(ref.score)) or abs(score - ref.score) <= 1e-9
        assert run.metadata["stop"]["pbi_summary"]["frames"] == len(verdicts[uid])
    # pbi flagged (and the agent) act on live analyses only
    assert flagged_runs(runs) == flagged_before
    # resumable: what is done is skipped; a partial re-scoring (its worker died) is redone
    victim = uids[2]
    runs[done[victim].metadata["start"]["uid"]].delete(recursive=True, external_only=False)
    from bluesky_tiled_plugins import TiledWriter
    from event_model import compose_run

    partial = compose_run(metadata={"pbi_rescore": True, "model_sha256": sha,
                                    "rescore_of": victim, "raw_uid": victim})
    TiledWriter(runs)("start", partial.start_doc)
    out = CliRunner().invoke(_app(), [
        "rescore", "--model", str(bus_files["model"]), "--tiled", server.uri, "--api-key",
        server.api_key, "--workers", "1", "--mask", str(bus_files["mask"]),
        "--dark", str(bus_files["dark"]), "--npt", str(bus_instrument.npt), "--json"])
    assert out.exit_code == 0, out.output
    again = json.loads(out.output.strip().splitlines()[-1])
    assert again["skipped"] == 2 and again["partial_deleted"] == 1
    assert [r["raw_uid"] for r in again["rescored"]] == [victim]
    assert set(_rescored(runs, sha)) == set(uids)
    assert partial.start_doc["uid"] not in runs
    # and a selection: only runs of one recipe
    some = rescore(job, cluster, query=("composition=25:75",), progress=False)
    assert some["selected"] == 1 and some["skipped"] == 1


def _app():
    from pbi_bluesky.cli import app

    return app


def test_rescore_takes_the_registry_current_model_when_it_starts(
        server, archive, cluster, bus_files, bus_instrument, tmp_path, monkeypatch):
    """``pbi catalog rescore --registry``: the promoted model, named in the analysis run."""
    import shutil

    from pbi_bluesky.models.registry import ModelRegistry

    monkeypatch.delenv("PBI_MODEL_KEY", raising=False)
    runs, uids, _verdicts = archive
    variant = tmp_path / "b"
    shutil.copytree(bus_files["model"], variant)
    doc = json.loads((variant / "model.json").read_text())
    (variant / "model.json").write_text(json.dumps({**doc, "alpha": 0.2}, indent=1))
    reg = ModelRegistry(tmp_path / "registry")
    reg.promote(bus_files["model"])
    promoted = reg.promote(variant)
    out = CliRunner().invoke(_app(), [
        "rescore", "--registry", str(reg.root), "--tiled", server.uri, "--api-key",
        # the module's warm cluster (the LocalCluster the command starts itself is the
        # first test's; one full run saw that fresh single worker hang for 586 s here)
        server.api_key, "--scheduler", cluster.scheduler.address,
        "--mask", str(bus_files["mask"]),
        "--dark", str(bus_files["dark"]), "--npt", str(bus_instrument.npt),
        "--query", "composition=25:75", "--json"], env={"PBI_BEAMLINE_CONFIG": None})
    assert out.exit_code == 0, out.output
    summary = json.loads(out.output.strip().splitlines()[-1])
    assert summary["model_registry_version"] == promoted.number == 2
    assert summary["model_sha256"] == promoted.model_sha256
    assert summary["selected"] == 1 and len(summary["rescored"]) == 1
    (run,) = _rescored(runs, promoted.model_sha256).values()
    start = run.metadata["start"]
    assert start["model_registry_version"] == 2 and start["model_registry"] == str(reg.root)
    threshold = float(np.asarray(run["pbi_anomaly"].read()["threshold"])[0])
    assert threshold == pytest.approx(reg.load().threshold)
    assert reg.load().threshold != pytest.approx(reg.load(reg.version(1)).threshold)
    # no model and no registry: refused up front
    out = CliRunner().invoke(_app(), ["rescore", "--tiled", server.uri],
                             env={"PBI_BEAMLINE_CONFIG": None})
    assert out.exit_code == 2 and "give --model, or a registry" in out.output
