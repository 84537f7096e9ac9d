"""``pbi agent``: the anomaly agent beside a queue server."""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from pbi_bluesky.cli.app import command, queue_app, require_extra


@command(queue_app, "agent", old="agent")
def agent(
    queue: Annotated[str, typer.Option(
        help="The RE Manager's 0MQ control address (default: "
             "$QSERVER_ZMQ_CONTROL_ADDRESS or tcp://127.0.0.1:60615).")] = "",
    config: Annotated[Path | None, typer.Option(
        help="beamline.yaml whose tiled section names the catalog (default: "
             "$PBI_BEAMLINE_CONFIG).")] = None,
    tiled: Annotated[str | None, typer.Option(
        help="Tiled URI (overrides the configuration's).")] = None,
    api_key_env: Annotated[str | None, typer.Option(
        help="Environment variable holding the Tiled API key (default: the "
             "configuration's, else PBI_TILED_API_KEY).")] = None,
    data_dir: Annotated[Path | None, typer.Option(
        help="Embedded catalog folder, when there is no Tiled server.")] = None,
    policy: Annotated[Path | None, typer.Option(
        help="Policy YAML (default: profiles/profile_saxs/agent_policy.yaml).")] = None,
    since: Annotated[str | None, typer.Option(
        help="Follow analyses from this ISO time (default: --lookback-h ago).")] = None,
    lookback_h: Annotated[float, typer.Option(
        help="Hours a (re)started agent looks back: flags it has not decided in that "
             "window are handled, rescans in it count toward a sample's budget.")] = 2.0,
    poll: Annotated[float, typer.Option(help="Seconds between polls.")] = 0.5,
    status_file: Annotated[Path | None, typer.Option(
        help="Write the agent's state (JSON) here after every poll.")] = None,
) -> None:
    """Follow analysis runs in Tiled; queue a rescan of each flagged sample as the policy
    allows (through bluesky-queueserver-api); record confirmed / transient decisions.

    Restartable: what was already requested or decided is read back from Tiled and from
    the queue's item metadata, so a restart never queues a second rescan. Stops on
    SIGTERM / Ctrl-C.
    """
    require_extra("queue", "pbi queue agent")
    from pbi_bluesky.agent import PolicyError, build_agent, load_policy, run_agent
    from pbi_bluesky.config import ConfigError, config_path, load_config

    try:
        pol = load_policy(policy)
    except PolicyError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    uri, key_env = tiled, api_key_env
    if config is not None or (os.environ.get("PBI_BEAMLINE_CONFIG") and not tiled):
        try:
            cfg = load_config(config_path(config))
        except ConfigError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        uri = uri or cfg.tiled.uri
        key_env = key_env or cfg.tiled.api_key_env
    uri = uri or os.environ.get("PBI_TILED_URI")
    if not uri and data_dir is None:
        typer.echo("error: no catalog: pass --config (a beamline.yaml with tiled.uri), "
                   "--tiled or --data-dir", err=True)
        raise typer.Exit(2)
    api_key = os.environ.get(key_env or "PBI_TILED_API_KEY") or None
    address = queue or os.environ.get("QSERVER_ZMQ_CONTROL_ADDRESS") or "tcp://127.0.0.1:60615"
    try:
        start = datetime.fromisoformat(since).timestamp() if since else \
            time.time() - lookback_h * 3600.0
    except ValueError as exc:
        raise typer.BadParameter(f"--since: not an ISO time: {since!r}") from exc
    if poll <= 0:
        raise typer.BadParameter("--poll must be > 0")
    the_agent = build_agent(zmq_control_addr=address, tiled_uri=uri, api_key=api_key,
                            policy=pol, since=start, data_dir=data_dir)
    typer.echo(f"pbi agent: queue {address}, catalog {uri or data_dir}, policy {pol.source}")
    run_agent(the_agent, poll_s=poll, status_file=status_file)
