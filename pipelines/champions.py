"""What drift needs to know of each model's champion (its version and the newest event it was trained
on), read from the MLflow registry, or from a copy kept beside it while the registry is unchanged.

Connecting to MLflow costs ~2 s here (its import and its SQL store's start-up), which a nightly
pays every day, mostly to learn that the champion is the one of yesterday. The copy is used only
for the default store, a SQLite file: it is keyed on that file's size and modification time (and
those of its write-ahead log), so any change to the registry (a training run, a promotion, an alias
moved from the MLflow UI) makes it stale and the registry is read again. A registry on a server
is always read.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

from millrace.contracts import storage
from millrace.contracts.project import Project


@dataclass(frozen=True)
class ChampionFacts:
    """``champion``: its version, or None with ``why`` (not trained yet, no champion yet...).
    ``seen``: the newest event time of its training rows (ISO 8601; "" when its run records none)."""

    model: str
    champion: str | None
    seen: str = ""
    why: str = ""


class Champions:
    """The facts of each asked model; ``client`` connects to MLflow the first time it is needed.
    ``read_from_registry(client, project, model)`` reads one model's facts from MLflow."""

    def __init__(self, project: Project, read_from_registry, reread: bool = False):
        self.project, self._read = project, read_from_registry
        self._client = None
        self._stamp = _registry_stamp(project)
        self._kept = {} if reread else _load(project, self._stamp)

    @property
    def client(self):
        if self._client is None:
            from millrace.training import registry

            self._client = registry.connect(self.project)
        return self._client

    def of(self, model: str) -> ChampionFacts:
        if model in self._kept:
            return self._kept[model]
        facts = self._read(self.client, self.project, model)
        self._kept[model] = facts
        return facts

    def keep(self) -> None:
        """Save what was read, under the registry's stamp taken before reading it (a registry
        changed meanwhile has another stamp: the copy is then never used)."""
        if self._stamp is None:
            return
        document = {"stamp": self._stamp, "models": {m: asdict(f) for m, f in self._kept.items()}}
        storage.write_atomically(_path(self.project), json.dumps(document, indent=1).encode(), f"{os.getpid()}")


def _path(project: Project) -> str:
    return os.path.join(project.state_dir, "drift", "champions.json")


def _registry_stamp(project: Project) -> list | None:
    from millrace.training.registry import tracking_uri

    uri = tracking_uri(project)
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///")
    stamp = [path]
    for name in (path, f"{path}-wal"):
        try:
            st = os.stat(name)
            stamp += [st.st_size, st.st_mtime_ns]
        except FileNotFoundError:
            stamp += [None, None]
    return stamp if stamp[1] is not None else None


def _load(project: Project, stamp: list | None) -> dict[str, ChampionFacts]:
    if stamp is None:
        return {}
    try:
        document = json.loads(storage.read_bytes(_path(project)))
        if document["stamp"] != stamp:
            return {}
        return {m: ChampionFacts(**f) for m, f in document["models"].items()}
    except FileNotFoundError:
        return {}
    except (ValueError, KeyError, TypeError):  # a damaged copy: the registry is the truth, read it again
        return {}
