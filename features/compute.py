"""Feature view computation: a pure function from Arrow tables to an Arrow table.

Each row is a daily snapshot of one entity, stamped at the end of the day: the values over
the trailing windows that end with that day. Batch builds, a streaming pipeline and the
serving tier call this same function, so they cannot disagree.

The windows are computed by DuckDB on the Arrow tables (zero copy in and out): one GROUP BY
per day, then window frames over days, so the cost grows with entity-days, not with events
times window length.
"""
from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.compute as pc

from millrace.contracts.arrow import TIMESTAMP
from millrace.features.expr import Expression, derive
from millrace.features.expr import parse as parse_expression
from millrace.features.spec import Aggregation, FeatureView, duration


def compute_view(view: FeatureView, key: str | list[str], event_time: str | None, events: pa.Table,
                 lookup: pa.Table | None, types: dict[str, pa.DataType], created_at: dt.datetime,
                 days: tuple[dt.date | None, dt.date | None] = (None, None), *,
                 derived: dict[str, Expression] | None = None) -> pa.Table:
    """Daily snapshot rows ``key..., event_timestamp, created_timestamp, features...`` of one view.

    ``key``: the join key, or a composite key's fields; ``events`` are the source rows; ``lookup``
    the enrichment rows (or None); ``days`` keeps only snapshots of days in [first, last] (windows
    still look back before ``first``); ``derived``: the source's derived columns, computed on
    ``events`` first (keys, columns and conditions may read them)."""
    import duckdb

    keys = [key] if isinstance(key, str) else list(key)
    events, view = _row_level(view, derived_columns(events, derived or {}, view, keys))
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    con.register("source_events", events)
    enriched = lookup is not None and view.enrich is not None
    if enriched:
        con.register("lookup", lookup)
    con.execute(f"CREATE TEMP VIEW ev AS {_events_sql(view, keys, event_time, enriched)}")
    sql = _view_sql(view, days)
    table = con.sql(sql).to_arrow_table()
    con.close()
    table = _apply_transforms(view, table)
    return _conform(table, keys, types, created_at, view.static)


def derived_columns(events: pa.Table, derived: dict[str, Expression], view: FeatureView,
                    keys: list[str]) -> pa.Table:
    """``events`` with the derived columns the view reads (and those they read) appended."""
    wanted = set(keys) | {a.column for a in view.aggregations if a.column}
    for agg in view.aggregations:
        if agg.where:
            wanted |= set(parse_expression(agg.where, _schema_of(events, derived)).columns)
    needed: dict[str, Expression] = {}
    for name in reversed(list(derived)):  # later derived columns may read earlier ones
        if name in wanted:
            needed[name] = derived[name]
            wanted |= set(derived[name].columns)
    return derive(events, {n: e for n, e in derived.items() if n in needed})


def _schema_of(events: pa.Table, derived: dict[str, Expression]) -> dict[str, pa.DataType]:
    return {f.name: f.type for f in events.schema} | {n: e.type for n, e in derived.items()}


def _row_level(view: FeatureView, events: pa.Table) -> tuple[pa.Table, FeatureView]:
    """Conditional aggregations as plain ones over masked columns: the value where the condition
    holds, null elsewhere (every aggregation skips nulls). share is the mean of the condition as
    0/1 over all rows (a null condition counts as not holding, as in SQL's WHERE)."""
    if not any(a.where for a in view.aggregations):
        return events, view
    schema = {f.name: f.type for f in events.schema}
    plain = []
    for i, agg in enumerate(view.aggregations):
        if agg.where is None:
            plain.append(agg)
            continue
        holds = pc.fill_null(parse_expression(agg.where, schema).evaluate(events), False)
        name = f"__where_{i}"
        if agg.function == "share":
            value, function = pc.cast(holds, pa.float64()), "mean"
        else:
            source = events.column(agg.column) if agg.column else pa.repeat(pa.scalar(1, pa.int64()), events.num_rows)
            value, function = pc.if_else(holds, source, pa.scalar(None, source.type)), agg.function
        events = events.append_column(name, value)
        plain.append(agg.model_copy(update={"column": name, "where": None, "function": function}))
    return events, view.model_copy(update={"aggregations": plain})


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _events_sql(view: FeatureView, keys: list[str], event_time: str | None, enriched: bool) -> str:
    ts = f"CAST({_q(event_time)} AS TIMESTAMPTZ)" if event_time and not view.static else "TIMESTAMPTZ '1970-01-01 00:00:00+00'"
    columns = sorted({a.column for a in view.aggregations if a.column})
    src = "s"
    # A composite key is one struct value: every window, join and sort below works on it unchanged.
    k = f"{src}.{_q(keys[0])}" if len(keys) == 1 else \
        "struct_pack(" + ", ".join(f"k{i} := {src}.{_q(c)}" for i, c in enumerate(keys)) + ")"
    select = [f"{k} AS k", f"{ts} AS ts", f"date_trunc('day', {ts}) AS d",
              "row_number() OVER () AS seq"]
    join = ""
    if enriched:
        # One row per key even if the lookup repeats keys: enrichment must never multiply events.
        k = _q(view.enrich.key)
        join = (f" LEFT JOIN (SELECT * FROM lookup QUALIFY row_number() OVER (PARTITION BY {k}) = 1) l "
                f"ON l.{k} = s.{k}")
    for c in columns:
        owner = "l" if enriched and c in view.enrich.columns else src
        select.append(f"{owner}.{_q(c)} AS {_q('c_' + c)}")
    present = " AND ".join(f"{src}.{_q(c)} IS NOT NULL" for c in keys)
    return f"SELECT {', '.join(select)} FROM source_events {src}{join} WHERE {present}"


def _window(agg: Aggregation) -> str:
    span = duration(agg.window)
    if span is None:
        return "(PARTITION BY daily.k ORDER BY daily.d ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)"
    return f"(PARTITION BY daily.k ORDER BY daily.d RANGE BETWEEN INTERVAL {span.days - 1} DAYS PRECEDING AND CURRENT ROW)"


def _view_sql(view: FeatureView, days) -> str:
    daily_cols = ["count(*) AS n"]
    for c in sorted({a.column for a in view.aggregations if a.column}):
        col = _q("c_" + c)
        daily_cols += [f"count({col}) AS {_q('cnt_' + c)}", f"min({col}) AS {_q('min_' + c)}",
                       f"max({col}) AS {_q('max_' + c)}",
                       # ties on the event time go to the last landed row, as in last_n
                       f"arg_max({col}, (ts, seq)) FILTER (WHERE {col} IS NOT NULL) AS {_q('last_' + c)}",
                       f"max(ts) FILTER (WHERE {col} IS NOT NULL) AS {_q('lastts_' + c)}"]
        if any(a.column == c and a.function in ("sum", "mean") for a in view.aggregations):
            daily_cols.append(f"sum({col}) AS {_q('sum_' + c)}")
    ctes = [f"daily AS (SELECT k, d, {', '.join(daily_cols)} FROM ev GROUP BY k, d)"]
    select = ["daily.k AS k", "daily.d AS d"]
    joins = []
    for i, agg in enumerate(view.aggregations):
        name = _q(agg.name)
        w = _window(agg)
        c = agg.column
        if agg.function == "count":  # rows, or with a column its non-null values
            counted = _q("cnt_" + c) if c else "n"
            select.append(f"CAST(sum({counted}) OVER {w} AS BIGINT) AS {name}")
        elif agg.function == "sum":
            select.append(f"sum({_q('sum_' + c)}) OVER {w} AS {name}")
        elif agg.function == "mean":
            select.append(f"sum({_q('sum_' + c)}) OVER {w} / nullif(sum({_q('cnt_' + c)}) OVER {w}, 0) AS {name}")
        elif agg.function in ("min", "max"):
            select.append(f"{agg.function}({_q(agg.function + '_' + c)}) OVER {w} AS {name}")
        elif agg.function == "last":
            select.append(f"arg_max({_q('last_' + c)}, {_q('lastts_' + c)}) OVER {w} AS {name}")
        else:
            cte, expr = _special(i, agg)
            ctes.append(cte)
            joins.append(f"LEFT JOIN x{i} ON x{i}.k = daily.k AND x{i}.d = daily.d")
            if agg.function == "last_n":  # a day with only null values keeps the list of the days before
                expr = (f"coalesce(last_value(x{i}.v IGNORE NULLS) OVER (PARTITION BY daily.k ORDER BY daily.d "
                        f"ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW), [])")
            select.append(f"{expr} AS {name}")
    where = []
    first, last = days
    if first is not None:
        where.append(f"d >= DATE '{first.isoformat()}'")
    if last is not None:
        where.append(f"d <= DATE '{last.isoformat()}'")
    body = f"SELECT {', '.join(select)} FROM daily {' '.join(joins)}"
    filt = f" WHERE {' AND '.join(where)}" if where else ""
    return f"WITH {', '.join(ctes)} SELECT * FROM ({body}){filt} ORDER BY k, d"


def _special(i: int, agg: Aggregation) -> tuple[str, str]:
    """Aggregations that cannot be rolled up from daily totals."""
    col = _q("c_" + agg.column)
    if agg.function == "distinct_count":  # window: all -> count first sightings, cumulatively
        return (f"x{i} AS (SELECT k, d, CAST(sum(first_seen) OVER (PARTITION BY k ORDER BY d) AS BIGINT) AS v "
                f"FROM (SELECT daily.k, daily.d, coalesce(f.c, 0) AS first_seen FROM daily LEFT JOIN "
                f"(SELECT k, d, count(*) AS c FROM (SELECT k, {col} AS v, min(d) AS d FROM ev WHERE {col} IS NOT NULL "
                f"GROUP BY k, {col}) GROUP BY k, d) f ON f.k = daily.k AND f.d = daily.d))"), f"coalesce(x{i}.v, 0)"
    if agg.function == "last_n":  # window: all -> the n latest events up to the end of each day
        return (f"x{i} AS (SELECT k, d, list_reverse(v) AS v FROM (SELECT k, d, ts, seq, "
                f"list({col}) OVER (PARTITION BY k ORDER BY ts, seq ROWS BETWEEN {agg.n - 1} PRECEDING AND CURRENT ROW) AS v "
                f"FROM ev WHERE {col} IS NOT NULL) QUALIFY row_number() OVER (PARTITION BY k, d ORDER BY ts DESC, seq DESC) = 1)"
                ), f"coalesce(x{i}.v, [])"
    if agg.function == "top_n":
        return _top_n(i, agg, col), f"coalesce(x{i}.v, [])"
    raise ValueError(agg.function)


def _top_n(i: int, agg: Aggregation, col: str) -> str:
    """The n most frequent tokens in the window, as of each entity-day: running totals per
    (entity, token), read back as of the day and as of the day the window starts."""
    # Tokens are text (the feature is a list of text): ties sort alphabetically, '10' before '9'.
    separator = (agg.split or "").replace("'", "''")  # a quote in the separator stays a quote
    token = f"unnest(string_split({col}, '{separator}'))" if agg.split else f"CAST({col} AS VARCHAR)"
    span = duration(agg.window)
    totals = (f"SELECT k, tok, d, sum(c) OVER (PARTITION BY k, tok ORDER BY d) AS total FROM "
              f"(SELECT k, tok, d, count(*) AS c FROM (SELECT k, d, {token} AS tok FROM ev WHERE {col} IS NOT NULL) "
              f"WHERE tok <> '' GROUP BY k, tok, d)")
    pairs = f"SELECT daily.k, daily.d, t.tok FROM daily JOIN (SELECT DISTINCT k, tok FROM tot{i}) t ON t.k = daily.k"
    before = ""
    count = "now.total"
    if span is not None:
        before = (f" ASOF LEFT JOIN tot{i} old ON old.k = p.k AND old.tok = p.tok "
                  f"AND old.d <= p.d - INTERVAL {span.days} DAYS")
        count = "now.total - coalesce(old.total, 0)"
    return (f"tot{i} AS ({totals}), x{i} AS (SELECT k, d, list(tok ORDER BY cnt DESC, tok)[1:{agg.n}] AS v FROM "
            f"(SELECT p.k, p.d, p.tok, {count} AS cnt FROM ({pairs}) p ASOF JOIN tot{i} now "
            f"ON now.k = p.k AND now.tok = p.tok AND now.d <= p.d{before}) WHERE cnt > 0 GROUP BY k, d)")


def _apply_transforms(view: FeatureView, table: pa.Table) -> pa.Table:
    for t in view.transforms:
        col = table.column(t.column)
        if t.function == "split":
            value = pc.split_pattern(col, t.sep)
        else:
            denominator = pc.cast(table.column(t.denominator), pa.float64())
            ratio = pc.divide(pc.cast(col, pa.float64()), denominator)
            value = pc.if_else(pc.equal(denominator, 0.0), pa.scalar(None, pa.float64()), ratio)  # x/0: unknown
        table = table.append_column(t.name, value)
    return table


def _conform(table: pa.Table, keys: list[str], types: dict[str, pa.DataType], created_at: dt.datetime,
             static: bool) -> pa.Table:
    """Name, type and order the columns as Feast expects: key, event and created timestamps, features.
    Snapshots are stamped at the end of their day; static rows at the epoch."""
    day = table.column("d").cast(TIMESTAMP)
    event = day if static else pc.add(day, pa.scalar(dt.timedelta(days=1), pa.duration("us")))
    k = table.column("k").combine_chunks()
    columns = {key: (k if len(keys) == 1 else k.field(i)).cast(types[key]) for i, key in enumerate(keys)}
    columns |= {"event_timestamp": event, "created_timestamp": pa.repeat(pa.scalar(created_at, TIMESTAMP), table.num_rows)}
    for name, dtype in types.items():
        if name not in keys:
            columns[name] = table.column(name).cast(dtype)
    return pa.table(columns)
