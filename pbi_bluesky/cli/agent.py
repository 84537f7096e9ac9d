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
    feed: Annotated[bool, typer.Option(
        help="Follow the verdict feed the configuration's feed section names (--no-feed: "
             "poll Tiled only, and hold no lease).")] = True,
    feed_url: Annotated[str | None, typer.Option(
        help="Redis URL of the verdict feed (overrides feed.url).")] = None,
    lease: Annotated[bool, typer.Option(
        help="Hold a lease on the feed's Redis, so that of several agents on one queue "
             "server (start each with --lease) one acts and the others stand by.")] = False,
    raw_wait: Annotated[float, typer.Option(
        help="Seconds a flagged run's raw run may be missing from Tiled before the flag "
             "is skipped (with that reason).")] = 120.0,
) -> None:
    """Follow the live verdicts and queue rescans of flagged samples.

    Verdicts come from the feed on the queue server's Redis, else analysis runs in Tiled.
    Queue a rescan of each flagged sample as the policy allows (through
    bluesky-queueserver-api); record confirmed / transient decisions in Tiled.

    Restartable: what was already requested or decided is read back from Tiled and from
    the queue's item metadata, so a restart never queues a second rescan. With --lease the
    agents of one queue server hold a lease on the feed's Redis: a second one stands by and
    takes over within feed.lease_s + --poll seconds of the first one's death (while that
    Redis is down, no agent with --lease queues). Stops on SIGTERM / Ctrl-C.
    """
    require_extra("queue", "pbi queue agent")
    from pbi_bluesky.agent import PolicyError, build_agent, load_policy, run_agent
    from pbi_bluesky.config import ConfigError, config_path, load_config

    try:
        pol = load_policy(policy)
    except PolicyError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    from pbi_bluesky.agent import Lease
    from pbi_bluesky.config import FeedConfig

    uri, key_env = tiled, api_key_env
    feed_cfg = FeedConfig()
    if config is not None or (os.environ.get("PBI_BEAMLINE_CONFIG") and not tiled):
        try:
            cfg = load_config(config_path(config))
        except ConfigError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        uri = uri or cfg.tiled.uri
        key_env = key_env or cfg.tiled.api_key_env
        feed_cfg = cfg.feed
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
    url = (feed_url or feed_cfg.url) if feed else None
    held = None
    if lease:
        if not url:
            typer.echo("error: --lease needs the feed's Redis: a configuration with feed.url "
                       "or --feed-url", err=True)
            raise typer.Exit(2)
        held = Lease(url, f"{feed_cfg.stream}:agent-lease", lease_s=feed_cfg.lease_s,
                     password=feed_cfg.password)
    the_agent = build_agent(zmq_control_addr=address, tiled_uri=uri, api_key=api_key,
                            policy=pol, since=start, data_dir=data_dir, feed_url=url,
                            feed_stream=feed_cfg.stream, feed_password=feed_cfg.password,
                            poll_s=poll, raw_wait_s=raw_wait,
                            may_queue=held.still_held if held else None)
    typer.echo(f"pbi agent: queue {address}, catalog {uri or data_dir}, policy {pol.source}, "
               f"feed {feed_cfg.stream + ' at ' + url if url else 'none (polling Tiled)'}")
    run_agent(the_agent, poll_s=poll, status_file=status_file, lease=held)
