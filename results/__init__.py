"""The results store: Arrow schemas, Parquet parts, DuckDB queries and the HTML report.

``results.load(store_root)`` returns every table as a pandas DataFrame (for notebooks);
``results.store.Store`` writes and queries parts; ``results.report.write_report`` renders.
"""

from results.schema import SCHEMA_VERSION, TABLES
from results.store import Store, load

__all__ = ["SCHEMA_VERSION", "TABLES", "Store", "load"]
