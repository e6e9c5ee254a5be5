"""One writer per source: ``<state>/locks/<source>.lock``, held with ``flock`` for a whole ingest.

The kernel drops the lock when its holder exits in any way (kill -9 included), so a crashed run
never blocks the next one. The holder writes who it is into the file (a ``LockHolder``: pid, host,
command, start time); a second writer does not wait: it fails at once with ``SourceBusy`` (exit 75,
retryable) naming the holder, so a scheduler retries it and a person sees who is writing.

A lock file on a network filesystem is only as good as that filesystem's ``flock``; the state
folder is local in every supported setup (it also holds the SQLite stores).
"""
from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from contextlib import contextmanager
from typing import Iterator

from millrace.contracts.storage import is_uri, safe_name
from millrace.pipelines.errors import CorruptFile, SourceBusy
from millrace.pipelines.records import LockHolder


def lock_path(state_dir: str, source: str) -> str:
    return os.path.join(state_dir, "locks", f"{safe_name(source)}.lock")


@contextmanager
def source_lock(state_dir: str, source: str, command: str | None = None,
                wait: float = 0.0) -> Iterator[LockHolder | None]:
    """Hold the write lock of ``source`` for the block; ``SourceBusy`` if another process holds it
    (still, after ``wait`` seconds: a scheduler's tasks of one source queue at the lock)."""
    if is_uri(state_dir):  # no flock on object stores: one writer is then the scheduler's job
        yield None
        return
    path = lock_path(state_dir, source)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.5)
                    continue
            raise SourceBusy(f"{path}: source '{source}' is being written by {_describe(fd)} (fix: wait for that "
                             f"run to finish, then rerun; exit 75 means the same command can pass later)") from None
        me = LockHolder(pid=os.getpid(), host=socket.gethostname(),
                        command=command or " ".join(["millrace", *sys.argv[1:]]),
                        started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        os.ftruncate(fd, 0)
        os.pwrite(fd, me.to_json().encode(), 0)
        try:
            yield me
        finally:
            os.ftruncate(fd, 0)  # a later writer's first instant must not name this process
    finally:
        os.close(fd)  # releases the lock (so does any exit, kill -9 included)


def holder(state_dir: str, source: str) -> LockHolder | None:
    """Who holds the lock now; None when nobody does."""
    path = lock_path(state_dir, source)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None
        except BlockingIOError:
            return _read(fd, path)
    finally:
        os.close(fd)


def _read(fd: int, path: str) -> LockHolder | None:
    data = os.pread(fd, 65536, 0)
    try:
        return LockHolder.from_json(data, path) if data.strip() else None
    except CorruptFile:
        return None


def _describe(fd: int) -> str:
    who = _read(fd, "")
    if who is None:  # the holder has the lock but has not written its name yet
        return "another process (starting)"
    return f"pid {who.pid} on {who.host} since {who.started_at} (`{who.command}`)"
