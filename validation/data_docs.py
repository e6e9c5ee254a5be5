"""The project's Great Expectations Data Docs: one GX site built by GX from GX's own stores.

A file-backed GX context lives at ``<state>/gx/`` (GX's layout: ``great_expectations.yml``,
``expectations/``, ``uncommitted/validations/``); its one Data Docs site, ``millrace``, is built
into ``<state>/data_docs/`` (``index.html``, ``expectations/...``, ``validations/...``). Each
validation result is stored under GE's run identifier of the millrace run (run name = run id, run
time = the UTC time the run id begins with), so the index lists every run by its id and time.

Workers never open the context. Each writes the results that get a page into its run's folder
(``stage``, one JSON file per result, names unique within the run); the run's driver then stores
them in the context's validations store and has GX render only this run's pages and the index
(``publish``), holding a lock, so neither Beam's worker processes nor runs of two sources write
the context at the same time.
"""
from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import re
import shutil
from contextlib import contextmanager

GX_FOLDER = "gx"
SITE_FOLDER = "data_docs"
SITE_NAME = "millrace"
STAGED = "validations"   # folder of staged results in a run's folder
_RUN_TIME = re.compile(r"^(\d{8}T\d{6})Z")
_NO_TIME = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_GX_SITE_FOLDERS = {"expectations", "validations", "static", "profiling"}


def run_identifier(run_id: str):
    """GE's run identifier of a millrace run: the run id as its name; its time is the UTC start
    time millrace run ids begin with (``20261202T070502Z-…``), the epoch for an id without one,
    so every worker derives the same page path."""
    from great_expectations.core.run_identifier import RunIdentifier

    found = _RUN_TIME.match(run_id)
    when = (dt.datetime.strptime(found.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=dt.timezone.utc)
            if found else _NO_TIME)
    return RunIdentifier(run_name=run_id, run_time=when)


def result_key(suite_name: str, run_id: str, batch: str):
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier, ValidationResultIdentifier,
    )

    return ValidationResultIdentifier(expectation_suite_identifier=ExpectationSuiteIdentifier(name=suite_name),
                                      run_id=run_identifier(run_id), batch_identifier=batch)


def site_dir(state_dir: str) -> str:
    return os.path.join(state_dir, SITE_FOLDER)


def page_path(state_dir: str, suite_name: str, run_id: str, batch: str) -> str:
    """Where GX renders the page of a result: the site's ``validations/`` folder, then the key's
    parts (suite name split at dots, run name, run time, batch), as its HTML site store does."""
    return os.path.join(site_dir(state_dir), "validations", *result_key(suite_name, run_id, batch).to_tuple()) + ".html"


def staged_dir(state_dir: str, source: str, run_id: str) -> str:
    return os.path.join(state_dir, "runs", source, run_id, STAGED)


def stage(state_dir: str, source: str, run_id: str, batch: str, document: dict, key: str,
          partitions: list[str]) -> str:
    """Write one GE result document (``to_json_dict``) for this run's publish and return the path
    its page will have. The document gets GE's run id and, as batch kwargs, the source and the
    partitions whose rows it validated (shown on its page)."""
    from millrace.contracts.storage import write_bytes

    run = run_identifier(run_id)
    meta = {**document.get("meta", {}), "run_id": {"run_name": run.run_name, "run_time": run.run_time.isoformat()},
            "batch_kwargs": {"data_asset_name": source, "partition_key": key, "partitions": partitions}}
    write_bytes(os.path.join(staged_dir(state_dir, source, run_id), f"{batch}.json"),
                json.dumps({**document, "meta": meta}).encode())
    return page_path(state_dir, document["suite_name"], run_id, batch)


def open_context(state_dir: str):
    """The project's file context (created on first use), with the ``millrace`` site at
    ``<state>/data_docs/`` (a path relative to the context, so a moved state folder still builds)."""
    import great_expectations as gx

    context = gx.get_context(mode="file", project_root_dir=state_dir)
    sites = context.list_data_docs_sites()
    if SITE_NAME not in sites:
        for name in list(sites):  # GX's default local_site would be a second site of the same results
            context.delete_data_docs_site(name)
        context.add_data_docs_site(SITE_NAME, {
            "class_name": "SiteBuilder", "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                              "base_directory": os.path.join("..", SITE_FOLDER) + os.sep},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"}})
    return context


def publish(state_dir: str, source: str, run_id: str, suite) -> str | None:
    """Store this run's staged results in the context and build their pages, the suite's page and
    the index, once. Returns the site's index.html; None when the run staged nothing."""
    from great_expectations.core.expectation_validation_result import ExpectationSuiteValidationResultSchema
    from great_expectations.data_context.types.resource_identifiers import ExpectationSuiteIdentifier

    from millrace.contracts.storage import is_uri

    if is_uri(state_dir):  # a GX file context and its lock need a local folder (as the SQLite stores do)
        return None
    folder = staged_dir(state_dir, source, run_id)
    names = sorted(n for n in os.listdir(folder) if n.endswith(".json")) if os.path.isdir(folder) else []
    if not names:
        return None
    schema = ExpectationSuiteValidationResultSchema()
    with _lock(state_dir):
        context = open_context(state_dir)
        context.suites.add_or_update(suite)
        keys = []
        for name in names:
            with open(os.path.join(folder, name), encoding="utf-8") as fh:
                result = schema.loads(fh.read())
            key = result_key(result.suite_name, run_id, name[: -len(".json")])
            context.validation_results_store.set(key, result)
            keys.append(key)
        _drop_hand_written_pages(state_dir, source)
        context.build_data_docs(site_names=[SITE_NAME],
                                resource_identifiers=[*keys, ExpectationSuiteIdentifier(name=suite.name)])
    return os.path.join(site_dir(state_dir), "index.html")


def _drop_hand_written_pages(state_dir: str, source: str) -> None:
    """Older runs wrote a hand-made index per source at ``<state>/data_docs/<source>/``; its links
    would point at pages no longer kept, so it goes once the GX site holds the source."""
    old = os.path.join(site_dir(state_dir), source)
    if source not in _GX_SITE_FOLDERS and os.path.isfile(os.path.join(old, "index.html")):
        shutil.rmtree(old)


@contextmanager
def _lock(state_dir: str):
    """One publisher at a time (runs of different sources may end together); waits, since a
    publish takes well under a second."""
    path = os.path.join(state_dir, "locks", "data_docs.lock")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
