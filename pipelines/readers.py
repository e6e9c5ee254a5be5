"""Read one landing file into text columns, keeping each row's line number and raw bytes.

Every cell is read as text so one wrong value cannot fail a whole file; types are
applied later, vectorized (``contracts.arrow.coerce``). Rows that cannot be split
into fields (wrong column count, broken JSON, bad UTF-8) get a reason here and
travel on with null cells, so that good + quarantined always equals the input.
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from millrace.contracts.arrow import is_stringish
from millrace.contracts.model import LandingFormat
from millrace.validation.reasons import BAD_ENCODING, MALFORMED_RECORD, MISSING_COLUMN

BOM = b"\xef\xbb\xbf"
_THREADED_JSON_BYTES = 4 << 20


class UnreadableFile(ValueError):
    """The file as a whole cannot be read (e.g. a CSV header naming a column twice): its
    partition is rejected, naming the file and this message."""


FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


@dataclass
class RawRecords:
    """The records of one landing file, aligned row by row."""

    text: pa.Table          # one string column per contract field (null where absent)
    line: np.ndarray        # 1-based physical line (row number for Parquet)
    raw: object             # .take(rows) -> the original bytes of those records
    reason: pa.Array        # reason code for rows broken before typing, else null
    field: pa.Array         # the field the reason is about, else null
    sha256: str
    size: int


def format_of(path: str) -> str | None:
    lower = path.lower()
    for ext, fmt in FORMATS.items():
        if lower.endswith(ext):
            return fmt
    return None


def read_records(path: str, data: bytes, fields: tuple[str, ...], landing: LandingFormat | None = None,
                 fmt: str | None = None) -> RawRecords:
    """``landing``: the source's CSV delimiter and quote and its null tokens (default: comma,
    double quote, only an empty cell is null). ``fmt``: csv, jsonl or parquet, for records that did
    not come from a file (a stream's entries, joined by newlines); default: from ``path``'s extension."""
    landing = landing or LandingFormat()
    fmt = fmt or format_of(path)
    digest = hashlib.sha256(data).hexdigest()
    size = len(data)
    if fmt != "parquet" and data.startswith(BOM):
        data = data[len(BOM):]  # a byte-order mark is not content; line numbers stay the same
    if fmt == "parquet":
        text, raw, line, reason, field = _read_parquet(data, fields, landing)
    else:
        lines = _split_lines(data)
        bad_utf8 = _bad_utf8_lines(data, lines)
        reader = _read_csv if fmt == "csv" else _read_jsonl
        text, raw, line, reason, field = reader(lines, bad_utf8, fields, landing)
    return RawRecords(text=text, line=line, raw=raw, reason=reason, field=field, sha256=digest, size=size)


# -- lines -----------------------------------------------------------------------------------

@dataclass
class _Lines:
    data: bytes
    starts: np.ndarray   # byte offset where each line starts
    ends: np.ndarray     # byte offset where its content ends (before \r?\n)

    def __len__(self):
        return len(self.starts)

    def array(self) -> pa.Array:
        """Each line's bytes, terminator included, as one binary array over the file's buffer (no copy)."""
        offsets = np.append(self.starts, len(self.data)).astype(np.int64)
        return pa.LargeBinaryArray.from_buffers(
            pa.large_binary(), len(self), [None, pa.py_buffer(offsets), pa.py_buffer(self.data)])


def strip_terminator(payload: bytes) -> bytes:
    if payload.endswith(b"\n"):
        payload = payload[:-1]
    return payload[:-1] if payload.endswith(b"\r") else payload


def _split_lines(data: bytes) -> _Lines:
    buf = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(buf == 10)
    starts = np.concatenate([[0], newlines + 1])
    ends = np.concatenate([newlines, [len(buf)]])
    if len(starts) and starts[-1] == len(buf):  # file ends with a newline: no last empty line
        starts, ends = starts[:-1], ends[:-1]
    has_cr = (ends > starts) & (buf[np.maximum(ends - 1, 0)] == 13)
    ends = ends - has_cr
    return _Lines(data, starts.astype(np.int64), ends.astype(np.int64))


def _bad_utf8_lines(data: bytes, lines: _Lines) -> np.ndarray:
    """Indices of lines that are not valid UTF-8: one decode of the whole file, and a look at
    single lines only from the first bad byte on."""
    try:
        data.decode("utf-8")
        return np.array([], dtype=np.int64)
    except UnicodeDecodeError as exc:
        first = int(np.searchsorted(lines.starts, exc.start, side="right") - 1)
    bad = []
    for i in range(first, len(lines)):
        try:
            data[lines.starts[i]:lines.ends[i]].decode("utf-8")
        except UnicodeDecodeError:
            bad.append(i)
    return np.array(bad, dtype=np.int64)


def _blank(lines: _Lines) -> np.ndarray:
    empty = lines.ends == lines.starts
    buf = np.frombuffer(lines.data, dtype=np.uint8)
    # Lines of spaces only are blank too; checked only where the line is short.
    short = np.flatnonzero(~empty & (lines.ends - lines.starts <= 4))
    for i in short:
        if not bytes(buf[lines.starts[i]:lines.ends[i]]).strip():
            empty[i] = True
    return empty


# -- CSV -------------------------------------------------------------------------------------

def _read_csv(lines: _Lines, bad_utf8: np.ndarray, fields, landing: LandingFormat):
    import csv

    import pyarrow.csv as pcsv

    blank = _blank(lines)
    nonblank = np.flatnonzero(~blank)
    if not len(nonblank):
        return _empty(fields)
    header_idx = nonblank[0]
    data_idx = nonblank[1:]
    raw_all = lines.array()
    header = raw_all[int(header_idx)].as_py().decode("utf-8", "replace")
    columns = [c.strip() for c in next(csv.reader([header], delimiter=landing.csv_delimiter,
                                                  quotechar=landing.csv_quote), [])]
    twice = sorted({c for c in columns if columns.count(c) > 1})
    if twice:
        raise UnreadableFile(f"malformed CSV header: column {twice[0]!r} appears {columns.count(twice[0])} times "
                             f"(fix: give every column its own name)")
    invalid_texts: list[bytes] = []

    def on_invalid(row):
        invalid_texts.append(row.text.encode("utf-8", "surrogateescape") if isinstance(row.text, str) else row.text)
        return "skip"

    candidates = np.setdiff1d(data_idx, bad_utf8, assume_unique=True)
    if not len(candidates):  # header only, or every line undecodable
        empty = pa.table({c: pa.array([], pa.string()) for c in columns})
        return _assemble(lines, raw_all, data_idx, candidates, _text_columns(empty, fields, 0, landing),
                         np.array([], np.int64), bad_utf8, columns, fields)
    # Bad UTF-8 lines are blanked out before parsing, then reported on their own.
    body = lines.data[lines.starts[header_idx]:]
    if len(bad_utf8):
        body = _blank_out(lines, bad_utf8, int(lines.starts[header_idx]))
    table = pcsv.read_csv(
        io.BytesIO(body),
        read_options=pcsv.ReadOptions(use_threads=True, block_size=16 << 20),
        parse_options=pcsv.ParseOptions(delimiter=landing.csv_delimiter, quote_char=landing.csv_quote,
                                        invalid_row_handler=on_invalid, newlines_in_values=False),
        # Bad UTF-8 lines were removed above, so the columns can be read as text directly.
        convert_options=pcsv.ConvertOptions(column_types={c: pa.string() for c in columns},
                                            strings_can_be_null=False, quoted_strings_can_be_null=False),
    )
    invalid_idx = _locate(raw_all, candidates, invalid_texts)
    parsed_idx = np.setdiff1d(candidates, invalid_idx, assume_unique=True)
    if len(parsed_idx) != table.num_rows:
        return _read_csv_slow(lines, data_idx, bad_utf8, columns, fields, landing)
    text = _text_columns(table, fields, table.num_rows, landing)
    return _assemble(lines, raw_all, data_idx, parsed_idx, text, invalid_idx, bad_utf8, columns, fields)


def _blank_out(lines: _Lines, bad: np.ndarray, offset: int) -> bytes:
    """The file from ``offset`` with the content of the bad lines removed (they become empty lines)."""
    parts, pos = [], offset
    for i in sorted(int(b) for b in bad):
        if lines.starts[i] < offset:
            continue
        parts.append(lines.data[pos:lines.starts[i]])
        pos = int(lines.ends[i])
    parts.append(lines.data[pos:])
    return b"".join(parts)


def _locate(raw: pa.Array, candidates: np.ndarray, texts: list[bytes]) -> np.ndarray:
    """Line indices of the rows the CSV parser rejected, matched in order by their text."""
    found, after = [], -1
    for text in texts:
        hits = np.flatnonzero(pc.is_in(raw, pa.array([text, text + b"\n", text + b"\r\n"], pa.large_binary()))
                              .to_numpy(zero_copy_only=False))
        hits = hits[np.isin(hits, candidates) & (hits > after)]
        if len(hits):
            after = int(hits[0])
            found.append(after)
    return np.array(found, dtype=np.int64)


def _read_csv_slow(lines, data_idx, bad_utf8, columns, fields, landing):
    """Quoted values spanning lines: parse line by line with the csv module (rare path)."""
    import csv

    bad_set = set(bad_utf8.tolist())
    rows, parsed, invalid = [], [], []
    for i in data_idx:
        if i in bad_set:
            continue
        raw = lines.data[lines.starts[i]:lines.ends[i]].decode("utf-8")
        values = next(csv.reader([raw], delimiter=landing.csv_delimiter, quotechar=landing.csv_quote), [])
        if len(values) != len(columns):
            invalid.append(i)
            continue
        rows.append(values)
        parsed.append(i)
    text = pa.table({c: pa.array([r[j] for r in rows], pa.string()) for j, c in enumerate(columns)}) if rows \
        else pa.table({c: pa.array([], pa.string()) for c in columns})
    raw_all = lines.array()
    return _assemble(lines, raw_all, data_idx, np.array(parsed, dtype=np.int64), _text_columns(text, fields, len(rows), landing),
                     np.array(invalid, dtype=np.int64), bad_utf8, columns, fields)


# -- JSON lines ------------------------------------------------------------------------------

def _read_jsonl(lines: _Lines, bad_utf8: np.ndarray, fields, landing: LandingFormat):
    import pyarrow.json as pj

    blank = _blank(lines)
    data_idx = np.flatnonzero(~blank)
    raw_all = lines.array() if len(lines) else pa.array([], pa.large_binary())
    if not len(bad_utf8) and len(data_idx):
        try:
            # Threads only pay off on big files: on a small one they cost ~2 ms of a 0.3 ms read.
            threads = len(lines.data) > _THREADED_JSON_BYTES
            table = pj.read_json(io.BytesIO(lines.data),
                                 read_options=pj.ReadOptions(block_size=16 << 20, use_threads=threads))
            if table.num_rows == len(data_idx):
                text = _text_columns(table, fields, table.num_rows, landing)
                return _assemble(lines, raw_all, data_idx, data_idx, text, np.array([], np.int64), bad_utf8,
                                 table.column_names, fields)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass  # a broken or mixed-type line somewhere: take the line-by-line path below
    return _read_jsonl_slow(lines, raw_all, data_idx, bad_utf8, fields, landing)


def _read_jsonl_slow(lines, raw_all, data_idx, bad_utf8, fields, landing):
    bad_set = set(bad_utf8.tolist())
    values = {f: [] for f in fields}
    tokens = set(landing.null_tokens)
    parsed, invalid = [], []
    seen_columns: set[str] = set()
    for i in data_idx:
        if i in bad_set:
            continue
        try:
            record = json.loads(lines.data[lines.starts[i]:lines.ends[i]])
        except ValueError:
            invalid.append(i)
            continue
        if not isinstance(record, dict):
            invalid.append(i)
            continue
        seen_columns.update(record)
        for f in fields:
            value = record.get(f)
            # JSON strings only: a number or boolean is never a null token (this path is per line anyway).
            values[f].append(None if isinstance(value, str) and value.strip() in tokens else _json_text(value))
        parsed.append(i)
    text = pa.table({f: pa.array(values[f], pa.string()) for f in fields})
    columns = list(seen_columns) if parsed else list(fields)
    return _assemble(lines, raw_all, data_idx, np.array(parsed, np.int64), text, np.array(invalid, np.int64),
                     bad_utf8, columns, fields)


def _json_text(value):
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value)


# -- Parquet ---------------------------------------------------------------------------------

def _read_parquet(data: bytes, fields, landing: LandingFormat):
    import pyarrow.parquet as pq

    table = pq.read_table(pa.py_buffer(data))
    n = table.num_rows
    text = _text_columns(table, fields, n, landing)
    # Raw payload of a Parquet row: the row as JSON, built only for rows that need it (see payloads()).
    raw = _LazyJson(table)
    reason, field = _missing_columns(table.column_names, fields, n)
    return text, raw, np.arange(1, n + 1, dtype=np.int64), reason, field


class _LazyJson:
    """Parquet rows rendered as JSON on demand: only quarantined rows ever need a payload."""

    def __init__(self, table: pa.Table):
        self.table = table

    def take(self, indices) -> pa.Array:
        rows = self.table.take(pa.array(indices, pa.int64())).to_pylist()
        return pa.array([json.dumps(r, default=str).encode() for r in rows], pa.large_binary())

    def __len__(self):
        return self.table.num_rows


# -- shared ----------------------------------------------------------------------------------

def _text_columns(table: pa.Table, fields, n: int, landing: LandingFormat) -> pa.Table:
    """The contract's fields as text columns; absent ones all null. Text source columns have the
    source's null tokens turned into nulls (a JSON or Parquet number is never a token)."""
    cols = {}
    for f in fields:
        if f not in table.column_names:
            cols[f] = pa.nulls(n, pa.string())
            continue
        column = table.column(f).combine_chunks()
        text = column.cast(pa.string())
        if is_stringish(column.type):
            text = _null_tokens(text, landing.null_tokens)
        cols[f] = text
    return pa.table(cols)


def _null_tokens(text: pa.Array, tokens: tuple[str, ...]) -> pa.Array:
    """``text`` with the cells whose trimmed text is a null token set to null, vectorized. Only the
    empty token (always null downstream, in coercion): nothing to do."""
    if not any(tokens):
        return text
    hit = pc.is_in(pc.utf8_trim_whitespace(text), value_set=pa.array([t for t in tokens if t], pa.string()))
    return pc.if_else(hit, pa.scalar(None, pa.string()), text)


def _missing_columns(columns, fields, n):
    missing = [f for f in fields if f not in columns]
    if missing:
        return pa.repeat(pa.scalar(MISSING_COLUMN), n), pa.repeat(pa.scalar(missing[0]), n)
    return pa.nulls(n, pa.string()), pa.nulls(n, pa.string())


def _assemble(lines, raw_all, data_idx, parsed_idx, text, invalid_idx, bad_utf8, columns, fields):
    """Put parsed rows and broken lines back in file order, one reason per broken line."""
    n = len(data_idx)
    # Text table over all data lines: parsed rows in their place, nulls elsewhere.
    scatter = np.full(n, -1, dtype=np.int64)
    scatter[np.searchsorted(data_idx, parsed_idx)] = np.arange(len(parsed_idx))
    if len(parsed_idx) == n:  # the usual case: every line parsed
        full_text = text
    else:
        full_text = text.take(pa.array(scatter, pa.int64(), mask=scatter < 0)) if n else text.slice(0, 0)
    codes = np.full(n, -1, dtype=np.int8)  # index into _LINE_REASONS, -1: no reason yet
    codes[np.searchsorted(data_idx, invalid_idx)] = 0
    codes[np.searchsorted(data_idx, bad_utf8[np.isin(bad_utf8, data_idx)])] = 1
    missing = [f for f in fields if f not in columns]
    if missing:
        codes[codes < 0] = 2
    reason = _labels(codes, _LINE_REASONS)
    field = _labels(np.where(codes == 2, 0, -1).astype(np.int8), (missing[0] if missing else "",))
    return full_text, _Lookup(raw_all, data_idx), (data_idx + 1).astype(np.int64), reason, field


class _Lookup:
    """Raw bytes of the records, fetched only for the rows that need them (quarantined ones)."""

    def __init__(self, lines: pa.Array, index: np.ndarray):
        self.lines, self.index = lines, index

    def take(self, rows) -> pa.Array:
        return self.lines.take(pa.array(self.index[np.asarray(rows, dtype=np.int64)], pa.int64()))


_LINE_REASONS = (MALFORMED_RECORD, BAD_ENCODING, MISSING_COLUMN)


def _labels(codes: np.ndarray, labels) -> pa.Array:
    """Small-integer codes (-1 = null) as a string array, without a Python object per row."""
    if (codes < 0).all():
        return pa.nulls(len(codes), pa.string())
    return pa.DictionaryArray.from_arrays(pa.array(codes, mask=codes < 0), pa.array(list(labels))).cast(pa.string())


def _empty(fields):
    return (pa.table({f: pa.array([], pa.string()) for f in fields}), pa.array([], pa.large_binary()),
            np.array([], np.int64), pa.array([], pa.string()), pa.array([], pa.string()))


def payloads_at(path: str, data: bytes, line_numbers) -> list[bytes]:
    """Original bytes of the given 1-based lines (rows for Parquet): used for the rare rows
    quarantined after decoding, such as superseded duplicates."""
    index = np.asarray(line_numbers, dtype=np.int64) - 1
    if format_of(path) == "parquet":
        import pyarrow.parquet as pq

        return _LazyJson(pq.read_table(pa.py_buffer(data))).take(index).to_pylist()
    lines = _split_lines(data[len(BOM):] if data.startswith(BOM) else data)
    return [strip_terminator(p) for p in lines.array().take(pa.array(index, pa.int64())).to_pylist()]
