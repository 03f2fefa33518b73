"""Why a forget job stops without publishing."""


class MethodNotAvailable(Exception):
    """The request asks for a method or forget-set kind this version does not compute."""


class RequestCancelled(Exception):
    """Someone cancelled a request of the batch while it ran; nothing was published."""
