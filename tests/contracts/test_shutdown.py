"""contracts.shutdown: a process that ends through run_to_exit keeps what Python's shutdown gives
(threads joined, atexit callbacks, buffered output) and its exit code."""
from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(body: str) -> subprocess.CompletedProcess:
    code = textwrap.dedent("""\
        import atexit, sys, threading, time
        from millrace.contracts.shutdown import run_to_exit
        """) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_threads_atexit_and_buffered_output_survive_and_the_code_is_kept():
    proc = _run("""\
        def late():
            time.sleep(0.3)
            print("thread done")
        def main():
            atexit.register(lambda: print("atexit ran"))
            threading.Thread(target=late).start()  # non-daemon: the exit waits for it
            sys.stdout.write("no newline, not flushed")
            return 3
        run_to_exit(main)
        print("never printed")
        """)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.splitlines() == ["no newline, not flushedthread done", "atexit ran"]


def test_system_exit_codes_and_messages_mean_what_they_mean_to_python():
    assert _run("run_to_exit(lambda: sys.exit(7))").returncode == 7
    assert _run("run_to_exit(lambda: None)").returncode == 0
    proc = _run("run_to_exit(lambda: sys.exit('error: a message'))")
    assert (proc.returncode, proc.stderr) == (1, "error: a message\n")


def test_a_bug_still_shows_its_traceback_and_exits_1():
    proc = _run("""\
        def main():
            raise ZeroDivisionError("a bug")
        run_to_exit(main)
        """)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "ZeroDivisionError: a bug" in proc.stderr
