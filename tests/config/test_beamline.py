"""beamline.yaml read into typed settings: every key checked, with the file and the key
named; no secret in the file; the sections every part takes (scorer, bus, epics)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pbi_bluesky.config import BeamlineConfig, ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]
SIM = REPO / "profiles" / "profile_saxs" / "beamline.yaml"
EXAMPLE = REPO / "profiles" / "examples" / "beamline_pilatus.yaml"


def _write(tmp_path: Path, base: Path, replace: tuple[str, ...] = (), **changes) -> Path:
    data = yaml.safe_load(base.read_text())
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict) and key not in replace:
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    path = tmp_path / "beamline.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("changes, key, why", [
    ({"connection_timeout_s": "soon"}, "connection_timeout_s", "valid number"),
    ({"connection_timeout_s": ".inf"}, "connection_timeout_s", "number"),
    ({"plots": "yes"}, "plots", "valid boolean"),
    ({"scorer": {"queue_size": 0}}, "scorer.queue_size", "greater than or equal to 1"),
    ({"scorer": {"npt": 40.5}}, "scorer.npt", "valid integer"),
    ({"scorer": {"overflow": "drop"}}, "scorer.overflow", "'block' or 'shed'"),
    ({"detector": {"kind": "eiger"}}, "detector.kind", "pilatus"),
    ({"geometry": {"polarization_factor": 2}}, "geometry.polarization_factor", "less than"),
    ({"tiled": {"api_key_env": "MY KEY"}}, "tiled.api_key_env", "pattern"),
])
def test_a_bad_value_is_an_error_naming_the_file_and_the_key(tmp_path, changes, key, why):
    path = _write(tmp_path, SIM, **changes)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {key}: ") and why in message, message


def test_every_fault_of_a_file_is_named_at_once(tmp_path):
    path = _write(tmp_path, SIM, detector={"prefix": "X:", "wrong": 1}, plots=3,
                  changer={"name": "c"}, replace=("changer",))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "detector.wrong: unknown key; known: ['cam', 'hdf'," in message
    assert "plots: Input should be a valid boolean" in message
    assert "changer.motor: missing required key" in message


@pytest.mark.parametrize("changes, needle", [
    ({"tiled": {"api_key": "s3cret-k3y"}}, "tiled.api_key: secrets never live"),
    ({"tiled": {"uri": "https://user:s3cret-k3y@tiled.example/api"}}, "credentials"),
    ({"tiled": {"uri": "https://tiled.example/api?api_key=s3cret-k3y"}}, "query string"),
    ({"bus": {"url": "redis://:s3cret-k3y@bus.example:6379/0"}}, "bus.url"),
    ({"bus": {"password": "s3cret-k3y"}}, "bus.password: secrets never live"),
    ({"feed": {"url": "redis://:s3cret-k3y@qs.example:6379/0"}}, "feed.url"),
    ({"feed": {"password": "s3cret-k3y"}}, "feed.password: secrets never live"),
])
def test_a_secret_written_into_the_file_is_refused_and_not_repeated(tmp_path, changes,
                                                                    needle):
    path = _write(tmp_path, SIM, **changes)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert needle in str(info.value) and "s3cret" not in str(info.value)


def test_sections_every_part_takes_and_a_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("PBI_TEST_ROOT", str(tmp_path))
    path = _write(tmp_path, SIM, scorer={"batch_size": 8, "data_roots": ["$PBI_TEST_ROOT/x",
                                                                        "rel"]},
                  bus={"url": "redis://bus.example:6379/0", "lease_s": 4,
                       "claim_idle_s": 2.5},
                  epics={"ca_addr_list": "127.0.0.1", "ca_auto_addr_list": False,
                         "ca_server_port": 5070},
                  feed={"url": "redis://qs.example:6379/0", "stream": "bl:verdicts",
                        "lease_s": 2})
    cfg = load_config(path)
    assert cfg.feed.url == "redis://qs.example:6379/0" and cfg.feed.stream == "bl:verdicts"
    assert cfg.feed.lease_s == 2.0 and cfg.feed.maxlen == 10000
    monkeypatch.setenv(cfg.feed.password_env, "pw")
    assert cfg.feed.password == "pw" and "pw" not in repr(cfg.feed)
    assert cfg.scorer.batch_size == 8
    assert cfg.scorer.data_roots == (str(tmp_path / "x"), str(tmp_path / "rel"))
    assert cfg.bus.url == "redis://bus.example:6379/0" and cfg.bus.lease_s == 4.0
    assert cfg.epics.environment() == {"EPICS_CA_ADDR_LIST": "127.0.0.1",
                                       "EPICS_CA_AUTO_ADDR_LIST": "NO",
                                       "EPICS_CA_SERVER_PORT": "5070"}
    env = {"EPICS_CA_SERVER_PORT": "5064"}
    assert cfg.epics.apply(env) == {"EPICS_CA_ADDR_LIST": "127.0.0.1",
                                    "EPICS_CA_AUTO_ADDR_LIST": "NO"}
    assert env["EPICS_CA_SERVER_PORT"] == "5064"  # what the environment says wins
    again = load_config(cfg.to_yaml(tmp_path / "again.yaml"))
    assert again.model_dump(exclude={"source"}) == cfg.model_dump(exclude={"source"})


def test_overrides_are_checked_like_the_file():
    cfg = load_config(SIM)
    moved = cfg.with_overrides(detector={"prefix": "P:"}, connection_timeout_s=1.0)
    assert moved.detector.prefix == "P:" and moved.detector.write_path == "/tmp/pbi_sim_data"
    assert moved.connection_timeout_s == 1.0 and cfg.detector.prefix == "SAXS:"
    with pytest.raises(ConfigError, match="scorer.overflow"):
        cfg.with_overrides(scorer={"overflow": "sometimes"})
    with pytest.raises(ConfigError, match="scorer.qeue_size: unknown key"):
        cfg.with_overrides(scorer={"qeue_size": 3})


def test_the_shipped_files_load_and_the_settings_are_frozen():
    sim, example = load_config(SIM), load_config(EXAMPLE)
    assert sim.device_api == "ophyd" and sim.bus.url is None
    assert example.bus.url == "redis://xf12id2-bus.nsls2.bnl.gov:6379/0"
    assert Path(sim.geometry.poni).is_absolute() and Path(sim.geometry.poni).is_file()
    with pytest.raises(ValueError, match="frozen"):
        sim.name = "other"
    assert isinstance(sim, BeamlineConfig)
