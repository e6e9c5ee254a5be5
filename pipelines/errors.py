"""Errors raised by pipelines. One base class; each says whether a retry can help."""

from millrace.contracts.errors import MillraceError


class PipelineError(MillraceError):
    retryable = False


class NothingToIngest(PipelineError):
    """The requested range has no landing files."""


class LandingMissing(PipelineError):
    """The landing folder of a source does not exist."""


class RunFailed(PipelineError):
    """Some partitions were not committed (threshold, expectations, unreadable input)."""

    retryable = False
