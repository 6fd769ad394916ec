"""Engine error types. The API maps each type (never its message) to an HTTP status in one table."""


class EngineError(Exception):
    """Base class for every error the engine raises on purpose."""


class InvalidRequest(EngineError):
    """The request cannot be served as asked (bad token ids, bad template input, ...)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ContextLengthExceeded(InvalidRequest):
    """Prompt plus requested completion does not fit the model's context window."""


class Overloaded(EngineError):
    """The engine cannot take more work right now; the client should retry later."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class EngineDead(EngineError):
    """The model thread died or the engine is shut down; nothing can be served."""


class UnknownModel(EngineError):
    """No model of that name is served (or found in the models folder)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"the model {name!r} does not exist; GET /v1/models lists the models served here")
        self.param = "model"


class ModelLoadFailed(EngineError):
    """A model of the catalog could not be loaded (bad files, unsupported, over the memory budget)."""


class ModelRefused(ModelLoadFailed):
    """The model's config asks for what batched decoding cannot do; said before any weight is read."""
