"""Errors raised by validation. One base class; says whether a retry can help."""


class ValidationError(Exception):
    retryable = False


class ExpectationsFailed(ValidationError):
    """A blocking Great Expectations check failed on a partition: it must not be committed."""
