"""What a registration refuses. Each error's message says what to fix; `service/errors.py` maps the classes
to HTTP statuses."""


class IngestError(ValueError):
    """Bad input to a registration of a dataset or a model."""


class InvalidDatasetError(IngestError):
    """The dataset is malformed: wrong shapes, dtypes or values, bad ids, an unreadable archive or folder."""


class DatasetTooLargeError(IngestError):
    """The uploaded archive unpacks to more bytes than allowed."""


class InvalidModelError(IngestError):
    """The model's metadata, file or behaviour does not fit what it claims, or a dataset it names."""
