"""Hot reload: follow the release pointer and swap releases without dropping a request.

Every ``reload_seconds`` the watcher reads ``<state>/releases/CURRENT``. When it names another
release, that release is loaded in full beside the one serving (``repository.load``: every
SHA-256, every index bound to its encoder, every session made), warmed with a few requests, and
only then swapped in (``server.Live.swap``); requests in flight finish on the release they started
on. A release that fails any of this is refused: logged, counted
(``millrace_serving_reloads_total{outcome="refused"}``), and not tried again until the pointer
moves; the release being served keeps serving.
"""
from __future__ import annotations

import logging
import threading
import time

from millrace.contracts.errors import MillraceError

log = logging.getLogger("millrace.serving")


class Watcher:
    def __init__(self, root: str, live, load, *, seconds: float = 2.0, warmup: int = 3, metrics=None):
        """``load()``: the current release as a new Repository (raises when it cannot serve)."""
        self.root, self.live, self.load = root, live, load
        self.seconds, self.warmup, self.metrics = seconds, warmup, metrics
        self._stop = threading.Event()
        self._refused: tuple[str, str] | None = None  # (release, pointer sha) last refused
        self._thread = threading.Thread(target=self._loop, name="release-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _loop(self) -> None:
        while not self._stop.wait(self.seconds):
            try:
                self.check()
            except Exception:  # the watcher must outlive any one bad release
                log.exception("release watcher: unexpected error")

    def check(self) -> bool:
        """Swap in the release the pointer names, if it is new; True when a swap happened."""
        from millrace.indexing.release import current

        try:
            pointer = current(self.root)
        except MillraceError as exc:
            return self._refuse(("?", "?"), f"cannot read the release pointer: {exc}")
        serving = self.live.current
        if pointer is None or (serving is not None and pointer.release == serving.release.id):
            return False
        seen = (pointer.release, pointer.sha256)
        if seen == self._refused:
            return False
        started = time.perf_counter()
        try:
            repository = self.load()
        except MillraceError as exc:
            return self._refuse(seen, str(exc))
        try:
            repository.warm(self.warmup)
        except Exception as exc:
            repository.close()
            return self._refuse(seen, f"warm-up failed: {type(exc).__name__}: {exc}")
        if repository.release.id != pointer.release:  # the pointer moved while loading: check again next time
            log.info("release %s loaded while the pointer moved on to another; serving it until the next check",
                     repository.release.id)
        old = self.live.swap(repository)
        if self.metrics is not None:
            self.metrics.reload("swapped")
            self.metrics.release(repository.release.id)
        log.info("serving release %s (was %s), loaded and warmed in %.2f s", repository.release.id,
                 old.release.id if old else "none", time.perf_counter() - started,
                 extra={"fields": {"release": repository.release.id}})
        return True

    def _refuse(self, seen: tuple[str, str], reason: str) -> bool:
        self._refused = seen
        if self.metrics is not None:
            self.metrics.reload("refused")
        serving = self.live.current
        log.error("release %s refused, still serving %s: %s", seen[0], serving.release.id if serving else "none",
                  reason, extra={"fields": {"release": seen[0], "outcome": "refused"}})
        return False
