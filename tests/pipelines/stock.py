"""The lake as stock engines read it: DuckDB's delta extension (from the pip package, offline)
and deltalake's pyarrow dataset, with no millrace code on the read path."""
from __future__ import annotations

import posixpath
from pathlib import Path

KEY = "month"


def stock_rows(lake_table: Path, quarantine_table: Path) -> dict[str, tuple[dict, list]]:
    """engine -> (partition -> sorted (userId, movieId, rating, epoch seconds),
    sorted (partition, file name, line, reason) of the quarantine table)."""
    return {"duckdb": (_duckdb_lake(lake_table), _duckdb_quarantine(quarantine_table)),
            "pyarrow": (_pyarrow_lake(lake_table), _pyarrow_quarantine(quarantine_table))}


def _is_table(path: Path) -> bool:
    return (path / "_delta_log").is_dir()


def _by_partition(rows) -> dict:
    out: dict[str, list] = {}
    for month, *row in rows:
        out.setdefault(month, []).append(tuple(row))
    return {p: sorted(r) for p, r in sorted(out.items())}


def _duckdb(sql: str, path: Path) -> list[tuple]:
    import duckdb
    import duckdb_ext

    with duckdb_ext.init(duckdb.connect()) as con:
        return con.execute(sql, [str(path)]).fetchall()


def _duckdb_lake(path: Path) -> dict:
    if not _is_table(path):
        return {}
    return _by_partition(_duckdb(f'SELECT {KEY}, "userId", "movieId", rating, CAST(epoch("timestamp") AS BIGINT) '
                                 "FROM delta_scan(?)", path))


def _duckdb_quarantine(path: Path) -> list:
    if not _is_table(path):
        return []
    rows = _duckdb('SELECT "partition", file, line, reason FROM delta_scan(?)', path)
    return sorted((p, posixpath.basename(f), line, reason) for p, f, line, reason in rows)


def _dataset(path: Path):
    from deltalake import DeltaTable

    return DeltaTable(str(path)).to_pyarrow_dataset().to_table()


def _pyarrow_lake(path: Path) -> dict:
    if not _is_table(path):
        return {}
    t = _dataset(path)
    seconds = t.column("timestamp").cast("int64").to_pylist()
    return _by_partition(zip(t.column(KEY).to_pylist(), t.column("userId").to_pylist(),
                             t.column("movieId").to_pylist(), t.column("rating").to_pylist(),
                             [s // 1_000_000 for s in seconds]))


def _pyarrow_quarantine(path: Path) -> list:
    if not _is_table(path):
        return []
    t = _dataset(path)
    return sorted((p, posixpath.basename(f), line, reason) for p, f, line, reason in
                  zip(*(t.column(c).to_pylist() for c in ("partition", "file", "line", "reason"))))
