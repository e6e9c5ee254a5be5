import pyarrow as pa
import pytest

from millrace.contracts.arrow import TIMESTAMP, arrow_schema
from millrace.contracts.errors import ContractError
from millrace.contracts.loader import load_contract
from tests.conftest import EXAMPLE

RATINGS = (EXAMPLE / "contracts" / "ratings.yaml").read_text()


def test_example_contracts_compile():
    ratings = load_contract(EXAMPLE / "contracts" / "ratings.yaml")
    assert ratings.key_fields == ("userId", "movieId")
    assert ratings.event_time == "timestamp"
    assert (ratings.partitioning.key, ratings.partitioning.granularity) == ("month", "month")
    assert ratings.quarantine_threshold == 0.05
    assert ratings.field("rating").enum == (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0)
    schema = arrow_schema(ratings)
    assert schema.field("userId").type == pa.int64() and not schema.field("userId").nullable
    assert schema.field("rating").type == pa.float64()
    assert schema.field("timestamp").type == TIMESTAMP
    movies = load_contract(EXAMPLE / "contracts" / "movies.yaml")
    assert movies.event_time is None and movies.partitioning.key == "dt"
    assert movies.field("genres").pattern.startswith("^")
    assert [c.blocking for c in movies.table_checks] == [False]


BROKEN = {
    "yaml syntax": (RATINGS.replace("kind: DataContract", "kind: [DataContract"), "line", "fix the YAML syntax"),
    "unknown logical type": (RATINGS.replace("logicalType: number", "logicalType: float"), "logicalType", "Open Data Contract"),
    "missing id": (RATINGS.replace("id: urn:millrace:movielens:ratings\n", ""), "(top level)", "'id' is a required property"),
    "event time unknown": (RATINGS.replace("value: timestamp", "value: ts"), "eventTime", "use one of"),
    "no primary key": (RATINGS.replace("primaryKey: true", "primaryKey: false"), "properties", "primaryKey: true"),
    "min above max": (RATINGS.replace("maximum: 5.0", "maximum: 0.1"), "logicalTypeOptions", "swap or correct"),
    "threshold not a share": (RATINGS.replace("value: 0.05", "value: 5"), "quarantineThreshold", "0.05"),
    "timestamp encoding": (RATINGS.replace("value: epoch_seconds", "value: epoch_nanos"),
                           "(timestamp).customProperties.landingEncoding", "epoch_seconds"),
    "encoding on a number": (RATINGS.replace("physicalType: double\n", "physicalType: double\n        customProperties:\n"
                                             "          - {property: landingEncoding, value: epoch_seconds}\n"),
                             "(rating).customProperties.landingEncoding", "remove it"),
    "stored type of another logical type": (RATINGS.replace("physicalType: double", "physicalType: int64"),
                                            "(rating).physicalType", "physicalType: double"),
    "unknown timestamp physicalType": (RATINGS.replace("physicalType: timestamp", "physicalType: epoch_nanos"),
                                       "(timestamp).physicalType", "landingEncoding"),
    "old and new encodings disagree": (RATINGS.replace("physicalType: timestamp", "physicalType: epoch_millis"),
                                       "(timestamp).physicalType", "landingEncoding only"),
    "bad version": (RATINGS.replace("version: 1.0.0", "version: one"), "version", "MAJOR.MINOR.PATCH"),
    "granularity": (RATINGS.replace("value: month\n      - property: partitionKey", "value: week\n      - property: partitionKey"),
                    "partitionGranularity", "use one of"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_contract_gets_one_line_naming_file_field_and_fix(tmp_path, case):
    text, field, hint = BROKEN[case]
    path = tmp_path / "ratings.yaml"
    path.write_text(text)
    with pytest.raises(ContractError) as info:
        load_contract(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    assert field in message, message
    assert hint in message, message


def test_bad_pattern_is_reported(tmp_path):
    movies = (EXAMPLE / "contracts" / "movies.yaml").read_text().replace('pattern: "^(', 'pattern: "^((')
    path = tmp_path / "movies.yaml"
    path.write_text(movies)
    with pytest.raises(ContractError, match="invalid regular expression"):
        load_contract(path)


def test_missing_file(tmp_path):
    with pytest.raises(ContractError, match="does not exist"):
        load_contract(tmp_path / "nope.yaml")
