"""The project's Data Docs are GX's own site, built by ``build_data_docs`` from a file context."""
import datetime as dt
import os
import re
import urllib.parse
from pathlib import Path

from rich.console import Console

from millrace.contracts.project import load_project
from millrace.pipelines import lake
from millrace.pipelines.ingest import ingest
from millrace.pipelines.records import COMMITTED, REJECTED
from millrace.pipelines.summary import render
from tests.pipelines.test_transforms import HEADER

# Links of GX's index: hrefs, and the validation table's row links (rendered into its script).
_LINKS = re.compile(r"""href="([^"#][^"]*)"|'_table_row_link_path': '([^']+)'""")


def _land(project, day: str, ts: int, users: int) -> None:
    folder = os.path.join(project.landing, "ratings", day)
    os.makedirs(folder)
    with open(os.path.join(folder, "r.csv"), "w") as fh:
        fh.write(HEADER + "".join(f"{u},{u + 1},4.0,{ts}\n" for u in range(1, users + 1)))


def _text(page: Path) -> str:
    """A page's words, without markup, scripts and styles."""
    import html

    text = re.sub(r"<(script|style).*?</\1>", " ", page.read_text(), flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", text)))


def _local_links(page: Path) -> list[Path]:
    found = [a or b for a, b in _LINKS.findall(page.read_text())]
    return [page.parent / urllib.parse.unquote(link) for link in found if "://" not in link]


def test_runs_publish_their_results_to_one_gx_site(project_dir):
    import great_expectations as gx

    contract = project_dir / "contracts" / "ratings.yaml"  # partitions need at least 6 rows
    contract.write_text(contract.read_text().replace("mustBeGreaterThan: 0", "mustBeGreaterThan: 5"))
    project = load_project(project_dir)
    _land(project, "2009-11-02", 1257159144, 29)
    _land(project, "2009-12-14", 1260759144, 29)
    _land(project, "2010-01-02", 1262434000, 2)   # too few rows: a blocking expectation fails
    old = Path(project.state_dir, "data_docs", "ratings")  # the hand-written index of older versions
    old.mkdir(parents=True)
    (old / "index.html").write_text("<html><a href='month=2009-11.html'>2009-11</a></html>")
    first = ingest(project, "ratings")
    assert [(r.partition, r.status) for r in first.reports] == [("2009-11", COMMITTED), ("2009-12", COMMITTED),
                                                                ("2010-01", REJECTED)]
    site = Path(project.state_dir, "data_docs")
    assert first.data_docs == str(site / "index.html") and not old.exists()
    console = Console(record=True, width=200)
    render(console, first)
    assert f"data docs: {first.data_docs}" in console.export_text()  # the summary says where the site is
    # The rejected partition has its own page, which shows its failure on its own rows.
    failed = Path(first.reports[2].expectations.data_docs)
    assert failed.is_relative_to(site / "validations") and failed.name == "month=2010-01.html"
    text = _text(failed)
    assert "Status: Failed" in text and "Unsuccessful Expectations 1 " in text
    assert "Must have greater than or equal to 6 rows. 2 " in text  # the expectation and the observed count
    assert f"Run Name {first.run_id} " in text and "partitions ['2010-01']" in text

    again = ingest(project, "ratings", dt.date(2009, 12, 1), dt.date(2009, 12, 31))  # a rerun of one month
    [redone] = again.reports
    assert Path(redone.expectations.data_docs).exists() and again.run_id in redone.expectations.data_docs
    assert lake.committed_partitions(project.lake, "ratings", "month")[1].manifest.expectations.data_docs \
        == redone.expectations.data_docs  # the commit links to the page of the run that made it

    index = site / "index.html"
    html = index.read_text()
    assert "<title>Data Docs created by Great Expectations</title>" in html and "__none__" not in html
    links = _local_links(index)
    assert links and all(p.exists() for p in links), [p for p in links if not p.exists()]
    pages = {p for p in links if p.is_relative_to(site / "validations")}
    assert pages == {Path(r.expectations.data_docs) for r in first.reports + again.reports}
    assert {f"'run_name': '{first.run_id}'", f"'run_name': '{again.run_id}'"} <= set(
        re.findall(r"'run_name': '[^']*'", html))
    assert any(p.is_relative_to(site / "expectations") for p in links)  # the suite's page
    for page in pages:  # Home and the suite link of every page resolve too (GX 1.24 puts the favicon of a
        # validation page one folder too high, whatever the suite: its template counts one level less)
        assert all(p.exists() for p in _local_links(page) if p.name != "favicon.ico") and "__none__" not in page.read_text()

    # The context reopens as GX's own and lists every stored result under millrace's run ids.
    context = gx.get_context(context_root_dir=os.path.join(project.state_dir, "gx"))
    keys = context.validation_results_store.list_keys()
    assert sorted((k.run_id.run_name, k.batch_identifier) for k in keys) == sorted(
        [(first.run_id, "month=2009-11..2010-01"), (first.run_id, "month=2010-01"), (again.run_id, "month=2009-12")])
    [key] = [k for k in keys if k.batch_identifier == "month=2010-01"]
    assert context.validation_results_store.get(key).success is False

    # Without expectations nothing is validated, stored or rebuilt.
    _land(project, "2010-02-02", 1265068800, 29)
    quiet = ingest(project, "ratings", dt.date(2010, 2, 1), dt.date(2010, 2, 28), validate=False)
    assert quiet.data_docs is None and [r.expectations for r in quiet.reports] == [None]
    assert len(gx.get_context(context_root_dir=os.path.join(project.state_dir, "gx"))
               .validation_results_store.list_keys()) == 3
