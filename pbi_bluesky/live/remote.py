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

Serialisation is msgpack with numpy arrays (:mod:`pbi_bluesky.codec`) on both ends, never
bluesky's default pickle: whoever can reach the proxy can send bytes, and unpickling them
would run their code in the scorer. A payload that is not a valid msgpack document (a pickle,
say), an unknown document name or a non-mapping document is logged and dropped; the
dispatcher keeps running.

0MQ PUB/SUB drops what is published before a connection is fully established (the
"slow joiner": about 0.5 s here), so start the proxy and the remote scorer first, and let
the publisher settle (``make_publisher(..., settle=0.5)``) before the first run.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from pbi_bluesky.codec import DecodeError, decode, encode

if TYPE_CHECKING:  # bluesky.callbacks.zmq (pyzmq) is imported only when used
    from bluesky.callbacks.zmq import Publisher

    from pbi_bluesky.live.callback import LiveScorer

__all__ = ["decode_payload", "make_publisher", "serve_remote_scorer"]

logger = logging.getLogger(__name__)

DOCUMENT_NAMES = frozenset({"start", "descriptor", "event", "event_page", "stop", "resource",
                            "datum", "datum_page", "stream_resource", "stream_datum"})


def decode_payload(payload: bytes) -> dict[str, Any]:
    """Decode a message at the remote end: a msgpack mapping, or :class:`DecodeError`."""
    doc = decode(payload)
    if not isinstance(doc, dict):
        raise DecodeError(f"a document must be a mapping, got {type(doc).__name__}")
    return doc


def _safe_dispatcher(address: Any, prefix: bytes) -> Any:
    """Return bluesky's ``RemoteDispatcher`` with msgpack, and messages checked before dispatch.

    bluesky's own receive loop looks the document name up with ``DocumentNames[name]``
    outside its error handling, so one message with an unknown name would end it; this
    subclass checks every part and logs what it drops.
    """
    from bluesky.callbacks.zmq import RemoteDispatcher
    from event_model import DocumentNames

    class SafeRemoteDispatcher(RemoteDispatcher):
        dropped = 0

        async def _poll(self) -> None:
            while True:
                message = await self._socket.recv()
                try:
                    got_prefix, raw_name, payload = message.split(b" ", 2)
                    name = raw_name.decode()
                    if name not in DOCUMENT_NAMES:
                        raise DecodeError(f"unknown document name {name[:40]!r}")
                    if prefix and got_prefix != prefix:
                        continue
                    doc = decode_payload(payload)
                except (ValueError, UnicodeDecodeError, DecodeError) as exc:
                    type(self).dropped += 1
                    logger.warning("remote scorer dropped a message of %d bytes: %s",
                                   len(message), exc)
                    continue
                self.loop.call_soon(self.process, DocumentNames[name], doc)

    return SafeRemoteDispatcher(address, prefix=prefix, deserializer=decode_payload)


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
    runs until it is stopped. Documents are decoded with msgpack (see the module
    docstring); anything else is dropped and logged.

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
    dispatcher = _safe_dispatcher(address, prefix)
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
    """Return a bluesky 0MQ :class:`~bluesky.callbacks.zmq.Publisher` to ``RE.subscribe``.

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
        Documents are encoded with msgpack (:func:`pbi_bluesky.codec.encode`), never
        pickled. Call its ``close()`` when done.
    """
    from bluesky.callbacks.zmq import Publisher

    publisher = Publisher(address, prefix=prefix, serializer=encode)
    if settle > 0:
        time.sleep(settle)
    return publisher
