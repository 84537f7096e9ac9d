"""Storage at the edge: Tiled catalogs (embedded or server), the spool, flagged-run queries."""

from pbi_bluesky.store.bulk import bulk_create_runs
from pbi_bluesky.store.catalog import (
    DEFAULT_DATA_DIR,
    Catalog,
    CatalogUnavailable,
    bound_tiled_retries,
    data_dir,
    embedded_client,
    open_runs,
    require_catalog,
    runs_container,
)
from pbi_bluesky.store.curves import (
    CURVE_KEYS,
    CURVES_IN_TABLE,
    AnalysisFrames,
    analysis_curves,
    analysis_frames,
)
from pbi_bluesky.store.labels import (
    LABELS,
    LabelError,
    label_run,
    labelled_frames,
    labels_of,
)
from pbi_bluesky.store.postgres import catalog_indexes, create_catalog_indexes
from pbi_bluesky.store.queries import analysis_of, flagged_runs
from pbi_bluesky.store.spool import (
    ReplayOutcome,
    ReplayResult,
    SpoolFile,
    SpoolSink,
    read_spool_file,
)

__all__ = [
    "CURVES_IN_TABLE",
    "CURVE_KEYS",
    "AnalysisFrames",
    "DEFAULT_DATA_DIR",
    "LABELS",
    "LabelError",
    "Catalog",
    "CatalogUnavailable",
    "ReplayOutcome",
    "ReplayResult",
    "SpoolFile",
    "SpoolSink",
    "bound_tiled_retries",
    "bulk_create_runs",
    "catalog_indexes",
    "create_catalog_indexes",
    "data_dir",
    "analysis_curves",
    "analysis_frames",
    "analysis_of",
    "embedded_client",
    "flagged_runs",
    "label_run",
    "labelled_frames",
    "labels_of",
    "open_runs",
    "read_spool_file",
    "require_catalog",
    "runs_container",
]
