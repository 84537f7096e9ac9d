"""The durable document bus: bluesky documents on Redis Streams, scored by N workers.

* :class:`BusPublisher` - ``RE.subscribe``-able; never blocks the scan; local outbox while
  the broker is unreachable; large frames only by reference.
* :class:`BusWorker` - ``pbi worker``: its :class:`Scorer` scores per-frame work items in
  one consumer group, reclaims a dead worker's frames, dead-letters poison; one worker at a
  time (the lease holder) runs the :class:`Coordinator`, which dispatches documents into
  frames and assembles the analysis runs in Tiled.

Why Redis Streams, and how the layout maps onto Kafka: docs/howto/bus-workers.md.
"""

from pbi_bluesky.bus.assembler import Assembler
from pbi_bluesky.bus.coordinator import Coordinator
from pbi_bluesky.bus.dispatcher import Dispatcher, PoisonDocument
from pbi_bluesky.bus.ledger import Lease, Ledger, NotLeader, decode_result
from pbi_bluesky.bus.names import COORDINATOR_GROUP, SCORER_GROUP, BusNames, connect
from pbi_bluesky.bus.outbox import Outbox
from pbi_bluesky.bus.publisher import DEFAULT_INLINE_LIMIT, BusPublisher
from pbi_bluesky.bus.scorer import Scorer
from pbi_bluesky.bus.worker import BusWorker, ensure_groups, tiled_writer_factory

__all__ = [
    "COORDINATOR_GROUP",
    "DEFAULT_INLINE_LIMIT",
    "SCORER_GROUP",
    "Assembler",
    "BusNames",
    "BusPublisher",
    "BusWorker",
    "Coordinator",
    "Dispatcher",
    "Lease",
    "Ledger",
    "NotLeader",
    "Outbox",
    "PoisonDocument",
    "Scorer",
    "connect",
    "decode_result",
    "ensure_groups",
    "tiled_writer_factory",
]
