"""write_partitions: partitions written together are each judged and committed on their own."""
import json

from millrace.contracts.loader import load_contract
from millrace.pipelines import lake
from millrace.pipelines.write import COMMITTED, REJECTED, Locations, write_partition, write_partitions
from tests.conftest import EXAMPLE
from tests.pipelines.test_transforms import HEADER, _landing
from millrace.pipelines.decode import decode_file
from tests.pipelines.test_transforms import NOW_US


def _strict(tmp_path):
    """The ratings contract with partitions of at least two rows."""
    text = (EXAMPLE / "contracts" / "ratings.yaml").read_text().replace("mustBeGreaterThan: 0", "mustBeGreaterThan: 1")
    path = tmp_path / "strict.yaml"
    path.write_text(text)
    return load_contract(path)


def _decoded(contract, tmp_path, day: str, lines: list[str]):
    d = _landing(tmp_path, day, HEADER + "".join(lines))
    return [decode_file(contract, "ratings", d, open(d.path, "rb").read(), NOW_US, "run")]


def test_each_partition_is_judged_alone_and_passing_ones_share_a_page(tmp_path):
    from millrace.validation.expectations import SuiteRunner

    contract = _strict(tmp_path)
    where = Locations(str(tmp_path / "lake"), str(tmp_path / "q"), str(tmp_path / "state"))
    items = [("2009-11", _decoded(contract, tmp_path, "2009-11-02", ["1,2,4.0,1257159144\n", "1,3,4.0,1257159144\n"])),
             ("2009-12", _decoded(contract, tmp_path, "2009-12-14", ["1,2,4.0,1260759144\n"])),
             ("2010-01", _decoded(contract, tmp_path, "2010-01-02", ["3,4,5.0,1262434000\n", "3,5,5.0,1262434000\n"]))]
    reports = write_partitions(contract, "ratings", items, where, "run", SuiteRunner(contract))
    assert [(r.partition, r.status) for r in reports] == [("2009-11", COMMITTED), ("2009-12", REJECTED),
                                                          ("2010-01", COMMITTED)]
    assert "expect_table_row_count_to_be_between" in reports[1].problem
    assert [c.value for c in lake.committed_partitions(where.lake, "ratings", "month")] == ["2009-11", "2010-01"]
    # The rejected partition has a page of its own; the committed ones share the page of the stacked rows.
    # Pages are GX's, built when the run publishes what the write staged (tests/pipelines/test_data_docs.py).
    assert reports[1].expectations.data_docs.endswith("/run/19700101T000000.000000Z/month=2009-12.html")
    assert reports[0].expectations.data_docs == reports[2].expectations.data_docs
    assert reports[0].expectations.data_docs.endswith("/month=2009-11..2010-01.html")
    staged = tmp_path / "state" / "runs" / "ratings" / "run" / "validations"
    assert sorted(p.name for p in staged.iterdir()) == ["month=2009-11..2010-01.json", "month=2009-12.json"]
    shared = json.loads((staged / "month=2009-11..2010-01.json").read_text())
    assert shared["meta"]["run_id"]["run_name"] == "run"
    assert shared["meta"]["batch_kwargs"]["partitions"] == ["2009-11", "2009-12", "2010-01"]
    # Each committed partition's result file holds its own row count.
    [c] = [c for c in lake.committed_partitions(where.lake, "ratings", "month") if c.value == "2010-01"]
    result = json.loads(lake.read_bytes(lake.join(c.directory, c.manifest.expectations.results)))
    counts = [r["result"]["observed_value"] for r in result["great_expectations"]["results"]
              if r["expectation_config"]["type"] == "expect_table_row_count_to_be_between"]
    assert counts == [2]


def test_one_partition_written_alone_gets_its_own_page(tmp_path):
    from millrace.validation.expectations import SuiteRunner

    contract = _strict(tmp_path)
    where = Locations(str(tmp_path / "lake"), str(tmp_path / "q"), str(tmp_path / "state"))
    decoded = _decoded(contract, tmp_path, "2009-11-02", ["1,2,4.0,1257159144\n", "1,3,4.0,1257159144\n"])
    report = write_partition(contract, "ratings", "2009-11", decoded, where, "run", SuiteRunner(contract))
    assert report.status == COMMITTED and report.expectations.data_docs.endswith("/month=2009-11.html")
