"""Durable state in the data directory: models, datasets, artifacts, served states and the request ledger.

Everything here is files or SQLite; writes are atomic (temp file + fsync + rename). Tensors are
safetensors, never pickles. torch is imported only by the functions that read or write tensors.
"""

from models_store.errors import IntegrityError, NotFoundError, StoreError
from models_store.ledger import Ledger
from models_store.store import Store

__all__ = ["IntegrityError", "Ledger", "NotFoundError", "Store", "StoreError"]
