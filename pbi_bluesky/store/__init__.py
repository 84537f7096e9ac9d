"""Storage at the edge: Tiled catalogs (embedded or server), the spool, flagged-run queries."""

from pbi_bluesky.store.catalog import (
    DEFAULT_DATA_DIR,
    data_dir,
    embedded_client,
    open_runs,
    runs_container,
)
from pbi_bluesky.store.queries import analysis_of, flagged_runs
from pbi_bluesky.store.spool import SpoolSink, decode_doc, encode_doc, read_spool_file

__all__ = [
    "DEFAULT_DATA_DIR",
    "SpoolSink",
    "data_dir",
    "analysis_of",
    "decode_doc",
    "embedded_client",
    "encode_doc",
    "flagged_runs",
    "open_runs",
    "read_spool_file",
    "runs_container",
]
