"""Durable state: models, datasets, artifacts, served states, the request ledger, and the database under them.

The database (`Database`: SQLite in the data directory or PostgreSQL, one schema, Alembic migrations) holds the
ledger; blobs are files. Writes are atomic (temp file + fsync + rename; a committed transaction). Tensors are
safetensors, never pickles. torch is imported only by the functions that read or write tensors.
"""

from models_store.database import Database, open_database
from models_store.errors import IntegrityError, NotFoundError, StoreError
from models_store.ledger import Ledger, open_ledger
from models_store.store import Store

__all__ = ["Database", "IntegrityError", "Ledger", "NotFoundError", "Store", "StoreError", "open_database",
           "open_ledger"]
