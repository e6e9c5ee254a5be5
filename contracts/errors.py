"""The error base of every millrace package, its exit codes, and the contract error.

Every package's ``errors.py`` derives its one base class from ``MillraceError``. Whether a retry
can help is a property of the class (``retryable``); the CLI turns it into an exit code here
(``exit_code``) and the inference tier will map the same classes to gRPC codes from this module.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1        # the run finished but some of its work was refused (e.g. a rejected partition)
EXIT_BAD_INPUT = 2     # a bad config, contract, argument or file: fix it, a retry will not help
EXIT_RETRYABLE = 75    # a service was unreachable or busy (EX_TEMPFAIL): the same command may pass later


class MillraceError(Exception):
    """Base of every error millrace raises on purpose. The message is one line."""

    retryable = False
    exit_code = EXIT_BAD_INPUT


class ContractError(MillraceError):
    """A project file or contract is wrong. The message names the file, the field and the fix."""

    def __init__(self, file: str, field: str, problem: str, fix: str = ""):
        # One line whatever the parts hold (a YAML error's own message spans lines).
        field, problem, fix = (" ".join(str(part).split()) for part in (field, problem, fix))
        self.file, self.field, self.problem, self.fix = str(file), field, problem, fix
        message = f"{self.file}: {field}: {problem}"
        if fix:
            message += f" (fix: {fix})"
        super().__init__(message)


class StorageError(MillraceError):
    """A file operation on the lake, landing zone or a store failed (not "the folder is absent").

    Retryable when the store could not be reached (``is_unreachable``); a permission problem or a
    broken listing is not. The message names the path.
    """

    def __init__(self, path: str, problem: str, retryable: bool = False):
        self.path, self.problem, self.retryable = str(path), problem, retryable
        super().__init__(f"{self.path}: {problem}")


class CorruptRecord(MillraceError):
    """A record millrace wrote (a report, a manifest, a result) is truncated, emptied or of another
    shape. Bad input (exit 2): the message names the file and how to get a good one again."""

    def __init__(self, file: str, problem: str, fix: str = "rebuild it with the command that wrote it"):
        self.file, self.problem, self.fix = str(file), " ".join(str(problem).split()), fix
        super().__init__(f"{self.file}: {self.problem} (fix: {fix})")


def exit_code(exc: MillraceError) -> int:
    """The process exit code for an error: retryable ones get their own, so schedulers retry only them."""
    return EXIT_RETRYABLE if exc.retryable else exc.exit_code


# Exception class names (anywhere in the cause chain) that mean "the service is not there".
_UNREACHABLE = {"ConnectionError", "ConnectionRefusedError", "ConnectionResetError", "TimeoutError",
                "OperationalError", "gaierror", "BusyLoadingError"}


def is_unreachable(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) says a database, store or server could not be reached.

    Matches exception types by class name through the MRO and the cause chain, so callers need
    not import redis, sqlalchemy or psycopg to recognise their connection errors.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if any(k.__name__ in _UNREACHABLE for k in type(exc).__mro__) and not _local_sqlite_fault(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _local_sqlite_fault(exc: BaseException) -> bool:
    """SQLite raises OperationalError for a missing table or a bad file as well: only a locked
    database is worth a retry there (an embedded file has no server to come back)."""
    driver = getattr(exc, "orig", None) or exc  # SQLAlchemy wraps the driver's error in .orig
    return type(driver).__module__ == "sqlite3" and "locked" not in str(driver).lower()
