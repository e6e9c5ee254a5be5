"""Errors of the indexing package. One base class; each says whether a retry can help."""

from millrace.contracts.errors import EXIT_BAD_INPUT, EXIT_FAILED, MillraceError


class IndexingError(MillraceError):
    """An index or release cannot be built, stored or loaded. Bad input (exit 2) unless a subclass says."""

    retryable = False
    exit_code = EXIT_BAD_INPUT


class IndexCorrupt(IndexingError):
    """An index file, id mapping or manifest is truncated, altered, too large or of another shape."""

    def __init__(self, file, problem: str, fix: str = "build the index again: `millrace index --model NAME`"):
        self.file = str(file)
        super().__init__(f"{file}: {problem} (fix: {fix})")


class EncoderMismatch(IndexingError):
    """An index was built from another encoder (version or ONNX bytes) than the one being served."""


class CatalogueError(IndexingError):
    """The catalogue cannot be embedded: empty, no item encoder, vectors of the wrong dimension."""


class RecallGateFailed(IndexingError):
    """The index cannot reach the recall gate at any search setting: nothing was stored (exit 1)."""

    exit_code = EXIT_FAILED


class ReleaseRefused(IndexingError):
    """A release cannot be created: a model has no champion, or its champion has no passing index."""


class ReleaseError(IndexingError):
    """A release or the release pointer is unknown, corrupt or incomplete."""


class ReleaseCorrupt(ReleaseError):
    """A release record (release.json, the pointer) is truncated, altered or of another shape."""

    def __init__(self, file, problem: str, fix: str = ""):
        self.file = str(file)
        super().__init__(f"{file}: {problem}" + (f" (fix: {fix})" if fix else ""))
