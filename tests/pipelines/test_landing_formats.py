"""Landing formats declared in the contract: CSV delimiter and quote, and null tokens, in decode."""
import json
import re
import time
from pathlib import Path

import pytest

from millrace.contracts.errors import ContractError
from millrace.contracts.loader import load_contract
from millrace.pipelines.decode import LandingFile, decode_file

DOC = Path(__file__).resolve().parents[2] / "docs" / "contracts.md"
EXAMPLES = re.findall(r"```yaml\n(apiVersion:.*?)```", DOC.read_text(), flags=re.S)
NOW_US = int(time.time() * 1_000_000)


def _contract(tmp_path, text: str, name: str = "c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return load_contract(path)


def _decode(contract, fmt: str, data: bytes):
    landing = LandingFile(f"landing/readings/2024-01-02/x.{fmt}", "2024-01-02", "2024-01-02")
    decoded = decode_file(contract, "readings", landing, data, NOW_US, "run")
    good = decoded.good.select(list(contract.field_names)).to_pylist()
    bad = [(r["line"], r["reason"], r["field"]) for r in decoded.quarantine.to_pylist()]
    return good, bad, decoded.quarantine.to_pylist()


def test_the_docs_examples_load_as_documented(tmp_path):
    assert len(EXAMPLES) == 2
    readings = _contract(tmp_path, EXAMPLES[0], "readings.yaml")
    assert (readings.landing.csv_delimiter, readings.landing.csv_quote) == (";", "'")
    assert readings.landing.null_tokens == ("", "NA", "null")
    assert readings.field("sensor").enum == ("a", "b")
    assert readings.field("status").enum == ("ok", "degraded")
    assert (readings.partitioning.key, readings.partitioning.granularity, readings.partitioning.field) == ("dt", "day", None)
    events = _contract(tmp_path, EXAMPLES[1], "events.yaml")
    assert (events.partitioning.key, events.partitioning.granularity, events.partitioning.field) == ("month", "month", "at")
    assert events.landing.csv_delimiter == "," and events.landing.null_tokens == ("",)


def test_semicolon_csv_with_quotes_and_null_tokens(tmp_path):
    contract = _contract(tmp_path, EXAMPLES[0])
    data = (b"sensor;value;status\n"
            b"a;1.5;'ok'\n"
            b"'b';NA;degraded\n"           # NA in a nullable number: null, the row is good
            b"'a;x';null;ok\n"             # a quoted delimiter stays in the value (not in enum)
            b"NA;2;ok\n"                   # NA in a required key: missing_required
            b" null ;3;ok\n"               # tokens are compared trimmed
            b"b;2,5;ok\n"                  # a comma is not a decimal point: type_mismatch
            b"a;1;ok;extra\n")             # one field too many with this delimiter: malformed
    good, bad, rows = _decode(contract, "csv", data)
    assert good == [{"sensor": "a", "value": 1.5, "status": "ok"}, {"sensor": "b", "value": None, "status": "degraded"}]
    assert sorted(bad) == [(4, "not_in_enum", "sensor"), (5, "missing_required", "sensor"),
                           (6, "missing_required", "sensor"), (7, "type_mismatch", "value"),
                           (8, "malformed_record", None)]
    payload = {r["line"]: r["payload"] for r in rows}
    assert payload[4] == b"'a;x';null;ok" and payload[8] == b"a;1;ok;extra"


def test_default_contract_keeps_na_a_type_mismatch(tmp_path):
    text = EXAMPLES[0].replace('value: ";"', 'value: ","').replace('value: ["", "NA", "null"]', "value: ['']")
    contract = _contract(tmp_path, text)
    good, bad, _ = _decode(contract, "csv", b"sensor,value,status\na,NA,ok\nb,,ok\n")
    assert good == [{"sensor": "b", "value": None, "status": "ok"}]
    assert bad == [(2, "type_mismatch", "value")]


@pytest.mark.parametrize("slow", [False, True], ids=["arrow", "line-by-line"])
def test_json_lines_null_token_strings(tmp_path, slow):
    contract = _contract(tmp_path, EXAMPLES[0])
    lines = [{"sensor": "a", "value": "NA", "status": "null"}, {"sensor": "NA", "value": 1, "status": "ok"},
             {"sensor": "b", "value": 2.0, "status": "NA "}]
    body = [json.dumps(r).encode() for r in lines] + ([b'{"sensor": "a", "val'] if slow else [])
    good, bad, _ = _decode(contract, "jsonl", b"\n".join(body) + b"\n")
    assert good == [{"sensor": "a", "value": None, "status": None}, {"sensor": "b", "value": 2.0, "status": None}]
    assert sorted(bad) == [(2, "missing_required", "sensor")] + ([(4, "malformed_record", None)] if slow else [])


@pytest.mark.parametrize("prop, value, problem", [
    ("csvDelimiter", '";;"', "is not one character"),
    ("csvDelimiter", '""', "is not one character"),
    ("csvQuote", "1", "is not one character"),
    ("csvQuote", '";"', "is also the delimiter"),
    ("nullTokens", "NA", "where a list of texts belongs"),
    ("nullTokens", "[NA, 1]", "where a list of texts belongs"),
])
def test_a_bad_landing_option_is_one_line_at_load(tmp_path, prop, value, problem):
    text = re.sub(rf"(property: {prop}\n\s+value: ).*", lambda m: m.group(1) + value, EXAMPLES[0])
    with pytest.raises(ContractError) as err:
        _contract(tmp_path, text)
    message = str(err.value)
    assert "\n" not in message and f"customProperties.{prop}" in message and problem in message
    assert "c.yaml" in message and "fix:" in message


def test_custom_delimiter_keeps_lines_right_around_bad_utf8_and_crlf(tmp_path):
    contract = _contract(tmp_path, EXAMPLES[0])
    data = b"sensor;value;status\r\n\r\na;NA;ok\r\nb\xff;1;ok\r\nb;null;'degraded'\r\n"
    good, bad, rows = _decode(contract, "csv", data)
    assert good == [{"sensor": "a", "value": None, "status": "ok"}, {"sensor": "b", "value": None, "status": "degraded"}]
    assert bad == [(4, "bad_encoding", None)]
    assert rows[0]["payload"] == b"b\xff;1;ok"


def test_parquet_string_columns_take_the_null_tokens(tmp_path):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    contract = _contract(tmp_path, EXAMPLES[0])
    buf = io.BytesIO()
    pq.write_table(pa.table({"sensor": ["a", "NA"], "value": ["NA", "2"], "status": ["ok", "null"]}), buf)
    good, bad, _ = _decode(contract, "parquet", buf.getvalue())
    assert good == [{"sensor": "a", "value": None, "status": "ok"}]
    assert bad == [(2, "missing_required", "sensor")]


@pytest.mark.parametrize("data, expected", [
    (b"sensor;value;status\n'a;1;ok\nb;NA;ok\n", [(2, "malformed_record", None)]),
    (b"sensor;value;status\na;1;'o\nk'\nb;NA;ok\n", [(2, "not_in_enum", "status"), (3, "malformed_record", None)]),
], ids=["unterminated quote", "quoted line break"])
def test_line_by_line_path_uses_the_same_delimiter_quote_and_tokens(tmp_path, data, expected):
    contract = _contract(tmp_path, EXAMPLES[0])
    good, bad, _ = _decode(contract, "csv", data)
    assert good == [{"sensor": "b", "value": None, "status": "ok"}]
    assert sorted(bad) == expected
