"""Errors of the inference tier. Each maps to one gRPC status code (``code``), in one place: the
servicer's handler wrapper (``server._handled``)."""

from millrace.contracts.errors import EXIT_BAD_INPUT, MillraceError


class ServingError(MillraceError):
    """A request or a release the server cannot use. ``code``: the grpc.StatusCode name."""

    exit_code = EXIT_BAD_INPUT
    code = "INTERNAL"


class InvalidInput(ServingError):
    """A request that does not match the model's metadata (name, datatype, shape, byte count)."""

    code = "INVALID_ARGUMENT"


class ModelNotFound(ServingError):
    """No such model, or not that version, in the release being served."""

    code = "NOT_FOUND"


class NotReady(ServingError):
    """No release is loaded yet (or the server is draining)."""

    code = "UNAVAILABLE"
    retryable = True


class Overloaded(ServingError):
    """A model's queue is full: the client should back off and retry."""

    code = "RESOURCE_EXHAUSTED"
    retryable = True


class DeadlineExceeded(ServingError):
    """The client's deadline passed before the answer was ready; the work was dropped."""

    code = "DEADLINE_EXCEEDED"
    retryable = True


class ReleaseRefused(ServingError):
    """A release that cannot serve (damaged, incompatible): the one being served keeps serving."""

    code = "FAILED_PRECONDITION"
