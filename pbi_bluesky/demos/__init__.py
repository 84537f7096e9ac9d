"""What ``pbi demo`` runs.

The offline demo (:mod:`~pbi_bluesky.demos.offline`), the live
demo on the simulated beamline (:mod:`~pbi_bluesky.demos.beamline`), the same tray through
the queue server with the agent (:mod:`~pbi_bluesky.demos.queue`; the loop it runs first
through the queue: :mod:`~pbi_bluesky.demos.queue_loop`), and the simulated IOC
in the foreground (:mod:`~pbi_bluesky.demos.iocs`). The only room besides
:mod:`pbi_bluesky.testing` that imports :mod:`sim_iocs`.
"""
