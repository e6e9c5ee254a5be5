"""Ending a millrace process without the native libraries' teardown.

Arrow's, FAISS's (OpenMP) and onnxruntime's thread pools are C++ objects that the C runtime
destroys after Python has finalized. A pool worker still alive at that moment makes
``std::thread``'s destructor call ``std::terminate``: "terminate called without an active
exception", SIGABRT, now and then, after the command has done all its work and printed its answer
(Arrow's own tracker: apache/arrow#34314). A scheduler would read that as a failed run.

So the entry points (the ``millrace`` CLI, ``python -m millrace.serving``) end through
:func:`run_to_exit`: the steps of Python's shutdown that user-visible work depends on run in their
usual order (non-daemon threads joined, ``atexit`` callbacks such as MLflow's and logging's, stdio
flushed), then the process leaves with its exit code and the native destructors never run. The
library itself never exits: code that imports millrace keeps Python's normal shutdown."""
from __future__ import annotations

import atexit
import os
import sys
import threading
import traceback
from collections.abc import Callable
from typing import NoReturn


def run_to_exit(entry: Callable[[], object]) -> NoReturn:
    """Run ``entry`` (a process's main), then end the process with its exit code: what it returns
    when an int, else the code of the ``SystemExit`` it raises, else 0. An uncaught exception prints
    its traceback and exits 1 (130 for Ctrl-C), as Python does."""
    try:
        result = entry()
        code = result if isinstance(result, int) else 0
    except SystemExit as exc:
        code = exit_status(exc.code)
    except KeyboardInterrupt:
        traceback.print_exc()
        code = 130
    except BaseException:  # noqa: BLE001 - a bug: shown as Python shows it, then the same exit
        traceback.print_exc()
        code = 1
    exit_process(code)


def exit_status(code: object) -> int:
    """What ``sys.exit(code)`` makes the process's status: None is 0, an int itself, anything else
    (a message) printed on stderr and 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def exit_process(code: int) -> NoReturn:
    """Python's shutdown minus the native destructors (see the module docstring)."""
    shutdown_threads = getattr(threading, "_shutdown", None)  # what finalization runs first
    if shutdown_threads is not None:
        shutdown_threads()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
            pass
    os._exit(code)
