"""Errors of the feature platform. One base class; each says whether a retry can help."""

from millrace.contracts.errors import CorruptRecord, MillraceError


class FeatureError(MillraceError):
    retryable = False


class FeatureSpecError(FeatureError):
    """features.yaml is wrong: the message names the file, the field and the fix."""

    def __init__(self, file, field: str, problem: str, fix: str = ""):
        message = f"{file}: {field}: {problem}" + (f" (fix: {fix})" if fix else "")
        super().__init__(message)


class NothingBuilt(FeatureError):
    """Materialize or a training set asked for a feature view that has no offline table yet."""


class CorruptTable(FeatureError, CorruptRecord):
    """An offline table, its manifest or the Feast registry does not hold what was written:
    the message names the file and how to rebuild it."""


class UnknownFeature(FeatureError):
    """A feature reference names no view or no feature of that view."""


class StoreUnavailable(FeatureError):
    """The online store or registry cannot be reached."""

    retryable = True
