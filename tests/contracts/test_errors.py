"""is_unreachable: one check for "the service is not there", by exception type through the cause chain."""
import sqlite3

from millrace.contracts.errors import EXIT_RETRYABLE, MillraceError, exit_code, is_unreachable


class _Wrapped(Exception):
    pass


def _raised_from(cause: BaseException) -> BaseException:
    try:
        try:
            raise cause
        except BaseException as inner:
            raise _Wrapped("wrapper") from inner
    except _Wrapped as outer:
        return outer


def test_connection_errors_anywhere_in_the_chain_are_unreachable():
    assert is_unreachable(ConnectionRefusedError(111, "refused"))
    assert is_unreachable(_raised_from(TimeoutError("timed out")))
    assert not is_unreachable(_raised_from(ValueError("bad value")))


def test_sqlite_faults_are_not_unreachable_unless_locked():
    assert not is_unreachable(sqlite3.OperationalError("no such table: t"))
    assert not is_unreachable(sqlite3.OperationalError("unable to open database file"))
    assert is_unreachable(sqlite3.OperationalError("database is locked"))


def test_a_server_side_operational_error_is_unreachable():
    OperationalError = type("OperationalError", (Exception,), {"__module__": "psycopg"})
    assert is_unreachable(OperationalError("connection failed: Connection refused"))


def test_retryable_errors_get_their_own_exit_code():
    class Busy(MillraceError):
        retryable = True

    assert exit_code(Busy("x")) == EXIT_RETRYABLE and exit_code(MillraceError("x")) == 2
