"""Errors raised by pipelines. One base class; each says whether a retry can help and its exit code."""

from millrace.contracts.errors import EXIT_FAILED, CorruptRecord, MillraceError


class PipelineError(MillraceError):
    retryable = False


class NothingToIngest(PipelineError):
    """The requested range has no landing files."""


class LandingMissing(PipelineError):
    """The landing folder of a source does not exist."""


class RunFailed(PipelineError):
    """Some partitions were not committed (threshold, expectations, unreadable input)."""

    retryable = False
    exit_code = EXIT_FAILED


class LandingInvalid(RunFailed):
    """Landing entries that are not read (symlink out of the zone, FIFO, folder that is not a real
    date...): the run does not start. Bad input (exit 2); a RunFailed so ``nightly`` goes on with
    the other sources. ``problems`` holds every entry (``records.LandingProblem``)."""

    exit_code = MillraceError.exit_code

    def __init__(self, problems: list):
        self.problems = list(problems)
        more = len(self.problems) - 1
        tail = f" (and {more} more landing entr{'y' if more == 1 else 'ies'} not read)" if more else ""
        super().__init__(self.problems[0].line() + tail)


class CorruptFile(PipelineError, CorruptRecord):
    """A file millrace wrote (manifest, report, lake data file) is truncated, emptied, swapped or
    not what it should be. Bad input (exit 2): the message names the file and how to rebuild it."""


class SourceBusy(PipelineError):
    """Another process is writing the same source: retry later (exit 75)."""

    retryable = True


class StreamUnavailable(PipelineError):
    """The Redis holding the sources' streams cannot be reached."""

    retryable = True


class SchemaChanged(PipelineError):
    """A contract version changed or removed stored columns, and the run does not rebuild every
    committed partition: the table would mix two schemas."""

    exit_code = EXIT_FAILED

    def __init__(self, table: str, changed: list[str], dropped: list[str], kept: list[str]):
        parts = ([f"changed type: {', '.join(changed)}"] if changed else []) + \
                ([f"removed: {', '.join(dropped)}"] if dropped else [])
        super().__init__(f"{table}: the contract changes stored columns ({'; '.join(parts)}) but "
                         f"{len(kept)} committed partition(s) would keep the old ones, e.g. {kept[0]} "
                         f"(fix: rebuild them all in one run: millrace ingest without --from/--to)")
