"""Names that the writers and the readers of data folders share, and where data lives.

- a shard folder (a world source, a view's ``shards/``) lists its shards' sample counts in
  :data:`SIZES_FILE`; a view folder holds its shards under :data:`SHARDS_DIR`, or, for an index
  view, the kept samples of its source's own shards in :data:`INDEX_FILE`;
- a downstream set (and its cached features) has the splits :data:`SPLITS`;
- real and declared sources and sets with relative paths live under :func:`default_data_dir`.
"""

from __future__ import annotations

import os
from pathlib import Path

SIZES_FILE = "sizes.json"
SHARDS_DIR = "shards"
INDEX_FILE = "index.parquet"
SPLITS = ("train", "validation", "test")
DATA_ENV = "TBENCH_DATA"
DEFAULT_DATA_DIR = "~/tbench-data"


def default_data_dir() -> Path:
    """Where real and custom sources and sets with relative paths live: ``$TBENCH_DATA``, else ``~/tbench-data``."""
    return Path(os.environ.get(DATA_ENV) or DEFAULT_DATA_DIR).expanduser()
