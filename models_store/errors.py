"""Errors of the durable store."""


class StoreError(Exception):
    """Base class of store errors."""


class NotFoundError(StoreError):
    """No model, dataset, artifact or request by that name."""


class AlreadyExistsError(StoreError):
    """A model or dataset by that name exists already."""


class IntegrityError(StoreError):
    """A stored file does not match the sha256 recorded for it, or an artifact is bound to other weights."""


class StaleStateError(StoreError):
    """A new served state was computed from a version that is no longer the current one (another writer
    published first): nothing was written; recompute on the current state."""
