"""Which landing files a run reads: whole partitions, chosen by range or by what changed."""
import dataclasses
import datetime as dt

import pytest

from millrace.contracts.loader import load_contract
from millrace.pipelines import landing
from millrace.pipelines.errors import LandingMissing
from millrace.pipelines.records import InputFile, PartitionManifest
from tests.conftest import EXAMPLE, GOLDEN

RATINGS = load_contract(EXAMPLE / "contracts" / "ratings.yaml")


@pytest.fixture
def zone(tmp_path):
    for day, name in [("2016-09-30", "a.csv"), ("2016-10-01", "b.jsonl"), ("2016-10-15", "c.csv"),
                      ("2016-11-02", "d.parquet"), ("2016-11-02", "notes.txt"), ("misc", "e.csv"),
                      ("2016-11-02", "_SUCCESS")]:
        path = tmp_path / "ratings" / day / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    return tmp_path


def test_discover_keeps_dated_known_formats_and_reports_the_rest(zone):
    files, skipped = landing.discover(str(zone), "ratings", RATINGS)
    assert [(f.landing_date, f.partition) for f in files] == [
        ("2016-09-30", "2016-09"), ("2016-10-01", "2016-10"), ("2016-10-15", "2016-10"), ("2016-11-02", "2016-11")]
    assert sorted(p.rsplit("/", 1)[-1] for p in skipped) == ["e.csv", "notes.txt"]


def test_a_date_selects_its_whole_partition(zone):
    files, _ = landing.discover(str(zone), "ratings", RATINGS)
    picked = landing.select(files, dt.date(2016, 10, 15), dt.date(2016, 10, 15))
    assert [f.landing_date for f in picked] == ["2016-10-01", "2016-10-15"]


def test_pending_sees_new_changed_and_recontracted_partitions(zone):
    files, _ = landing.discover(str(zone), "ratings", RATINGS)

    golden = PartitionManifest.from_json((GOLDEN / "pipelines" / "partition-manifest.v1.json").read_text())

    def manifest(partition, version="1.0.0", grow=0):
        group = [f for f in files if f.partition == partition]
        return golden.model_copy(update={
            "contract": golden.contract.model_copy(update={"version": version}),
            "inputs": [InputFile(path=f.path, landing_date=f.landing_date, bytes=f.size + grow, mtime=f.mtime)
                       for f in group]})

    committed = {"2016-09": manifest("2016-09"), "2016-10": manifest("2016-10", grow=1),
                 "2016-11": manifest("2016-11", version="0.9.0")}
    assert {f.partition for f in landing.pending(files, committed, RATINGS)} == {"2016-10", "2016-11"}
    committed = {p: manifest(p) for p in ("2016-09", "2016-10", "2016-11")}
    assert landing.pending(files, committed, RATINGS) == []
    extra = dataclasses.replace(files[0], path=files[0].path + ".more.csv")
    assert {f.partition for f in landing.pending(files + [extra], committed, RATINGS)} == {"2016-09"}


def test_missing_landing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(LandingMissing, match="does not exist"):
        landing.discover(str(tmp_path), "ratings", RATINGS)
