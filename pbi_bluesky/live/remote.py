"""Run the live scorer in another process, fed over bluesky's 0MQ document transport.

The RunEngine process publishes its documents to a ``bluesky-0MQ-proxy``; an analysis
process runs :func:`serve_remote_scorer`, which subscribes a :class:`LiveScorer` to a
:class:`bluesky.callbacks.zmq.RemoteDispatcher` listening to that proxy. Scoring then
costs the RunEngine process nothing but serialisation and a socket send::

    # shell:            bluesky-0MQ-proxy 5577 5578
    # analysis process:
    scorer = LiveScorer(model, sinks=[tiled_writer], mask=mask, dark=dark)
    serve_remote_scorer("localhost:5578", scorer)   # blocks; Ctrl-C to stop
    # RunEngine process:
    RE.subscribe(make_publisher("localhost:5577"))

Serialisation is bluesky's default, :func:`pickle.dumps` / :func:`pickle.loads`, which
carries the numpy frames of inline ``event`` documents as they are. That pickle is
bluesky's own local document transport between processes of one beamline (the proxy
must only be reachable from trusted hosts, as for any bluesky 0MQ deployment); no model
or data file is ever unpickled here.

0MQ PUB/SUB drops what is published before a connection is fully established (the
"slow joiner": about 0.5 s here), so start the proxy and the remote scorer first, and let
the publisher settle (``make_publisher(..., settle=0.5)``) before the first run.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # bluesky.callbacks.zmq (pyzmq) is imported only when used
    from bluesky.callbacks.zmq import Publisher

    from pbi_bluesky.live.callback import LiveScorer

__all__ = ["make_publisher", "serve_remote_scorer"]


def serve_remote_scorer(
    address: str | tuple[str, int],
    scorer: LiveScorer,
    *,
    prefix: bytes = b"",
    stop_event: threading.Event | None = None,
    poll_interval: float = 0.1,
) -> None:
    """Feed ``scorer`` with the documents a 0MQ proxy forwards; blocks until stopped.

    A :class:`bluesky.callbacks.zmq.RemoteDispatcher` is created (with its own asyncio
    event loop, in the calling thread), ``scorer`` is subscribed to it, and the dispatcher
    runs until it is stopped. Documents are unpickled with bluesky's default
    deserializer (see the module docstring).

    Parameters
    ----------
    address : str or tuple of (str, int)
        The proxy's *outgoing* (subscriber) address, e.g. ``"localhost:5578"``,
        ``"tcp://127.0.0.1:5578"`` or ``("localhost", 5578)``.
    scorer : LiveScorer
        The callback to feed. The caller keeps the reference (bluesky's callback
        registry only holds a weak one) and reads verdicts from ``scorer.channel``.
    prefix : bytes, optional
        Only accept documents published with this prefix (``b""``: accept all).
    stop_event : threading.Event, optional
        When set (from any thread), the dispatcher stops within ``poll_interval``
        seconds and this function returns.
    poll_interval : float, optional
        How often, in seconds, ``stop_event`` is checked.

    Returns
    -------
    None
        Returns once stopped. Frames already queued keep being scored by the
        scorer's worker thread; call ``scorer.flush(timeout)`` to wait for them.

    Notes
    -----
    Ways to stop it:

    * set ``stop_event`` (the way to stop it when it runs in a background thread);
    * ``KeyboardInterrupt`` (Ctrl-C) when it runs in the main thread; the interrupt
      propagates to the caller after the socket is closed.

    A dispatcher cannot be restarted: call this function again to serve again.
    Documents published before the subscription is established are lost (0MQ
    PUB/SUB), so confirm the connection, e.g. by publishing a throw-away run and
    waiting for ``scorer.channel.wait_for_run(uid, timeout)``, before relying on it.
    """
    from bluesky.callbacks.zmq import RemoteDispatcher

    dispatcher = RemoteDispatcher(address, prefix=prefix)
    dispatcher.subscribe(scorer)
    if stop_event is not None:
        loop = dispatcher.loop

        def _check_stop() -> None:
            if stop_event.is_set():
                task = dispatcher._task  # the receive task that start() is waiting on
                if task is not None:
                    task.cancel()
                    return
            loop.call_later(poll_interval, _check_stop)

        loop.call_soon(_check_stop)  # runs once start() runs the loop
    try:
        dispatcher.start()  # closes its socket, context and loop on the way out
    except asyncio.CancelledError:
        if stop_event is None or not stop_event.is_set():
            raise


def make_publisher(
    address: str | tuple[str, int],
    *,
    prefix: bytes = b"",
    settle: float = 0.5,
) -> Publisher:
    """A bluesky 0MQ :class:`~bluesky.callbacks.zmq.Publisher` to ``RE.subscribe``.

    Parameters
    ----------
    address : str or tuple of (str, int)
        The proxy's *incoming* (publisher) address, e.g. ``"localhost:5577"``.
    prefix : bytes, optional
        Tag for the published documents (no ``b" "``); a remote scorer started with
        the same ``prefix`` only accepts these.
    settle : float, optional
        Seconds to wait after connecting so the first documents are not dropped by
        0MQ's slow-joiner behaviour (``0`` to return at once).

    Returns
    -------
    Publisher
        Documents are pickled (bluesky's default serializer). Call its ``close()``
        when done.
    """
    from bluesky.callbacks.zmq import Publisher

    publisher = Publisher(address, prefix=prefix)
    if settle > 0:
        time.sleep(settle)
    return publisher
