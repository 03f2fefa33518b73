"""Domain errors of the unlearning core. The service maps them to HTTP in one place."""


class UnlearningError(Exception):
    """Base class of every error the core raises on purpose."""


class InvalidForgetSetError(UnlearningError):
    """The forget set is empty, covers every class, or names classes or samples that do not exist."""


class UnknownMethodError(UnlearningError):
    """No unlearning method or architecture is registered under that name."""


class ShapeMismatchError(UnlearningError):
    """An input, vector or weight file does not have the shape the model expects."""


class CandidateRejected(UnlearningError):
    """Every candidate a method computed failed the utility guard; nothing was published. `guard` holds what was
    measured for each attempt."""

    def __init__(self, message: str, guard: dict):
        super().__init__(message)
        self.guard = guard
