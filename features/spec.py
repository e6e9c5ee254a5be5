"""``features.yaml``: entities and feature views, checked against the project's contracts.

A view aggregates one source per entity over trailing event-time windows. Its rows are daily
snapshots: one row per entity and day with activity, stamped at the end of that day (the moment
the day's data is complete), so a training example can only see days that ended before it.
"""
from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from millrace.contracts.arrow import TIMESTAMP, arrow_type
from millrace.contracts.loader import read_yaml
from millrace.contracts.names import check_name
from millrace.contracts.project import Project
from millrace.features.errors import FeatureSpecError
from millrace.features.expr import Expression, ExpressionError
from millrace.features.expr import parse as parse_expression

NUMERIC_ONLY = ("sum", "mean")
_DURATION = re.compile(r"^(\d{1,9})d$")
MAX_DAYS = 36_500  # windows and ttls up to 100 years: event times stay within Arrow's and DuckDB's range
# Feature value types Feast's stores hold (feast_repo maps each to a Feast type).
STORABLE = (pa.int64(), pa.int32(), pa.float64(), pa.float32(), pa.string(), pa.bool_(), TIMESTAMP)
_MAPS = ("entities", "feature_views", "derived")  # sections that must be mappings of name -> definition


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Entity(_Frozen):
    join_key: str | None = Field(None, description="Key field, as named in the sources' contracts.")
    join_keys: list[str] | None = Field(None, min_length=1, max_length=8,
                                        description="A composite key: several fields (e.g. [origin, dest]).")
    source: str = Field(description="Source whose contract gives the key's type.")
    description: str = Field("", description="What the entity is.")

    @property
    def keys(self) -> list[str]:
        """The key fields, in declared order (one for a plain key)."""
        return list(self.join_keys) if self.join_keys else [self.join_key]


class Aggregation(_Frozen):
    name: str = Field(description="Feature name (unique within the view).")
    function: Literal["count", "sum", "mean", "min", "max", "last", "distinct_count", "last_n", "top_n", "share"] = Field(
        description="How values in the window are combined. count: rows (with a column: its non-null values); "
                    "share: the share of rows where `where` holds.")
    column: str | None = Field(None, description="Source or derived column (count counts rows without one).")
    where: str | None = Field(None, description="A condition on the source row (an expression, e.g. "
                                                "`arr_delay > 15`): only rows where it holds count; "
                                                "for share, the condition whose share is taken.")
    window: str = Field("all", description="Trailing event-time window in whole days ('7d', '30d', '365d') or 'all'.")
    n: int | None = Field(None, ge=1, le=1000, description="List length for last_n and top_n.")
    split: str | None = Field(None, description="top_n: split the column's text on this separator first.")


class Transform(_Frozen):
    name: str = Field(description="Derived feature name.")
    function: Literal["split", "ratio"] = Field(description="split: text -> list of text; ratio: a / b.")
    column: str = Field(description="Input feature (split) or numerator (ratio).")
    sep: str = Field("|", description="split: the separator.")
    denominator: str | None = Field(None, description="ratio: the denominator feature.")


class Enrich(_Frozen):
    source: str = Field(description="Source to look columns up in (its latest committed row per key).")
    key: str = Field(description="Key shared by both sources (YAML reads a bare `on` as true, hence `key`).")
    columns: list[str] = Field(description="Columns to add to each event before aggregating.")


class FeatureView(_Frozen):
    source: str = Field(description="Source (from millrace.yaml) the view aggregates.")
    entity: str = Field(description="Entity (from entities) the rows are about.")
    ttl: str = Field("0d", description="How long a value stays valid for point-in-time joins ('0d': forever).")
    online: bool = Field(True, description="Materialize to the online store.")
    static: bool = Field(False, description="Attributes valid for all time (e.g. a catalogue snapshot): "
                                            "one row per entity, stamped at the epoch.")
    enrich: Enrich | None = Field(None, description="Columns looked up from another source before aggregating.")
    aggregations: list[Aggregation] = Field(description="The features.")
    transforms: list[Transform] = Field(default_factory=list, description="Pure functions of the aggregated row.")
    description: str = Field("", description="What the view is for.")


class FeatureSpec(_Frozen):
    entities: dict[str, Entity] = Field(description="Entities by name.")
    derived: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="Row-level columns per source, computed from its rows before "
                                          "aggregation: {source: {column: expression}} (see docs/features.md).")
    feature_views: dict[str, FeatureView] = Field(description="Feature views by name.")


def duration(text: str) -> timedelta | None:
    """'30d' -> 30 days; 'all' -> None. ValueError for anything else, or more than MAX_DAYS."""
    if text == "all":
        return None
    m = _DURATION.match(text)
    if not m or int(m.group(1)) > MAX_DAYS:
        raise ValueError(text)
    return timedelta(days=int(m.group(1)))


class Features:
    """A checked features.yaml with the types of every feature, resolved from the contracts."""

    def __init__(self, path: Path, spec: FeatureSpec, project: Project, types: dict[str, dict[str, pa.DataType]],
                 derived: dict[str, dict[str, Expression]] | None = None):
        self.path, self.spec, self.project, self.types = path, spec, project, types
        self.derived = derived or {}

    def derived_columns(self, source: str) -> dict[str, Expression]:
        """The source's derived columns, in declared order (later ones may read earlier ones)."""
        return self.derived.get(source, {})

    def source_types(self, source: str) -> dict[str, pa.DataType]:
        """Every column a row of ``source`` has once derived: the contract's fields, then the derived ones."""
        return _source_types(self.project, source, self.derived)

    @property
    def views(self) -> dict[str, FeatureView]:
        return self.spec.feature_views

    def view(self, name: str) -> FeatureView:
        from millrace.features.errors import UnknownFeature

        if name not in self.views:
            raise UnknownFeature(f"unknown feature view '{name}' (fix: use one of {sorted(self.views)})")
        return self.views[name]

    def join_keys(self, view: str) -> list[str]:
        """The view's key fields in declared order: one, or several for a composite entity."""
        return self.spec.entities[self.view(view).entity].keys

    def join_key(self, view: str) -> str:
        """The key field of a one-key view (composite views: use join_keys)."""
        keys = self.join_keys(view)
        if len(keys) != 1:
            raise ValueError(f"view '{view}' has a composite key {keys}: use join_keys")
        return keys[0]

    def key_type(self, view: str) -> pa.DataType:
        key = self.join_key(view)  # unknown views fail here, with the valid names
        return self.types[view][key]

    def key_types(self, view: str) -> dict[str, pa.DataType]:
        """Each key field's type, in declared order."""
        return {key: self.types[view][key] for key in self.join_keys(view)}

    def feature_names(self, view: str) -> list[str]:
        v = self.view(view)
        return [a.name for a in v.aggregations] + [t.name for t in v.transforms]


def load_features(project: Project) -> Features:
    path = project.root / "features.yaml"
    if not path.exists():
        raise FeatureSpecError(path, "(file)", "does not exist", "declare entities and feature_views in features.yaml")
    data = read_yaml(path)
    _check_shape(path, data)
    try:
        spec = FeatureSpec(**(data or {}))
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise FeatureSpecError(path, loc, first["msg"].lower(), "see docs/features.md") from None
    _check_names(path, spec)
    derived = _check_derived(path, project, spec)
    types = {name: _check_view(path, project, spec, name, view, derived) for name, view in spec.feature_views.items()}
    return Features(path, spec, project, types, derived)


def _source_types(project: Project, source: str, derived: dict[str, dict[str, Expression]]) -> dict[str, pa.DataType]:
    columns = {f.name: arrow_type(f) for f in project.contract(source).fields}
    columns.update({name: e.type for name, e in derived.get(source, {}).items()})
    return columns


def _check_derived(path: Path, project: Project, spec: FeatureSpec) -> dict[str, dict[str, Expression]]:
    """Parse and type every derived column against its source's contract (and the ones before it)."""
    out: dict[str, dict[str, Expression]] = {}
    for source, columns in spec.derived.items():
        if source not in project.sources:
            raise FeatureSpecError(path, f"derived.{source}", f"unknown source '{source}'", f"use one of {project.sources}")
        schema = {f.name: arrow_type(f) for f in project.contract(source).fields}
        out[source] = {}
        for name, text in columns.items():
            at = f"derived.{source}.{name}"
            check_name(name, path, at)
            if name in schema:
                raise FeatureSpecError(path, at, f"'{name}' is already a column of '{source}'", "give it a new name")
            expression = _expression(path, at, text, schema)
            if expression.type not in STORABLE:
                raise FeatureSpecError(path, at, f"is {expression.type}", "derive a number, text, boolean or timestamp")
            out[source][name] = expression
            schema[name] = expression.type
    return out


def _expression(path: Path, where: str, text, schema: dict[str, pa.DataType]) -> Expression:
    try:
        return parse_expression(text, schema)
    except ExpressionError as exc:
        raise FeatureSpecError(path, where, f"`{text}` {exc}", "see Expressions in docs/features.md") from None


def _check_shape(path: Path, data) -> None:
    """Mappings where mappings belong, before pydantic (a list at the top level is a TypeError there)."""
    if data is not None and not isinstance(data, dict):
        raise FeatureSpecError(path, "(top level)", f"is a {_kind(data)}, not a mapping",
                               "write `entities:` and `feature_views:` sections (see docs/features.md)")
    for section in _MAPS:
        value = (data or {}).get(section)
        if value is not None and not isinstance(value, dict):
            raise FeatureSpecError(path, section, f"is a {_kind(value)}, not a mapping of names",
                                   f"write `{section}:` as `name: {{...}}` entries")
        for name, item in (value or {}).items():
            if not isinstance(item, dict):
                raise FeatureSpecError(path, f"{section}.{name}", f"is a {_kind(item)}, not a mapping",
                                       "give its fields as `key: value` lines under the name")


def _kind(value) -> str:
    return "list" if isinstance(value, list) else "null" if value is None else type(value).__name__


def _check_names(path: Path, spec: FeatureSpec) -> None:
    """Every name from the file through the one name rule: names become Feast objects, SQL tables,
    Redis fields and file names, and none of them may carry code or a path."""
    for name, entity in spec.entities.items():
        check_name(name, path, f"entities.{name}")
        if (entity.join_key is None) == (entity.join_keys is None):
            raise FeatureSpecError(path, f"entities.{name}", "needs exactly one of join_key and join_keys",
                                   "write join_key: <field>, or join_keys: [<field>, <field>] for a composite key")
        if len(set(entity.keys)) != len(entity.keys):
            raise FeatureSpecError(path, f"entities.{name}.join_keys", f"{entity.keys} repeats a field",
                                   "name each key field once")
    for name, view in spec.feature_views.items():
        where = f"feature_views.{name}"
        check_name(name, path, where)
        for i, agg in enumerate(view.aggregations):
            check_name(agg.name, path, f"{where}.aggregations[{i}].name")
        for i, t in enumerate(view.transforms):
            check_name(t.name, path, f"{where}.transforms[{i}].name")


def _check_view(path: Path, project: Project, spec: FeatureSpec, name: str, view: FeatureView,
                derived: dict[str, dict[str, Expression]]) -> dict:
    where = f"feature_views.{name}"
    if view.source not in project.sources:
        raise FeatureSpecError(path, f"{where}.source", f"unknown source '{view.source}'", f"use one of {project.sources}")
    if view.entity not in spec.entities:
        raise FeatureSpecError(path, f"{where}.entity", f"unknown entity '{view.entity}'",
                               f"use one of {sorted(spec.entities)}")
    contract = project.contract(view.source)
    columns = _source_types(project, view.source, derived)
    row_columns = dict(columns)  # what `where` conditions may read: the source row, before enrichment
    keys = spec.entities[view.entity].keys
    entity_source = spec.entities[view.entity].source
    entity_columns = _source_types(project, entity_source, derived) if entity_source in project.sources else {}
    for key in keys:
        if key not in columns:
            raise FeatureSpecError(path, f"{where}.entity", f"source '{view.source}' has no field '{key}'",
                                   f"add {key} to the contract, derive it, or pick another entity")
        if key in entity_columns and entity_columns[key] != columns[key]:
            raise FeatureSpecError(path, f"{where}.entity", f"key '{key}' is {columns[key]} in {view.source} but "
                                   f"{entity_columns[key]} in {entity_source}", "make the key types agree")
        if columns[key] not in (pa.int64(), pa.int32(), pa.string()):
            raise FeatureSpecError(path, f"{where}.entity", f"key '{key}' is {columns[key]}",
                                   "key entities on integer or text fields")
    if contract.event_time is None and not view.static:
        raise FeatureSpecError(path, f"{where}.static", f"source '{view.source}' has no event time",
                               "set static: true (attributes valid for all time) or use a source with eventTime")
    if view.enrich:
        columns.update(_check_enrich(path, project, f"{where}.enrich", view.enrich, columns))
    _duration(path, f"{where}.ttl", view.ttl)
    out = {key: columns[key] for key in keys}
    for i, agg in enumerate(view.aggregations):
        at = f"{where}.aggregations[{i}] ({agg.name})"
        if agg.name in out:
            raise FeatureSpecError(path, at, f"name '{agg.name}' is used twice", "give every feature a unique name")
        window = _duration(path, f"{at}.window", agg.window)
        if window is not None and window.days < 1:
            raise FeatureSpecError(path, f"{at}.window", "a window must cover at least one day", "write 1d or more, or all")
        if agg.where is not None:
            condition = _expression(path, f"{at}.where", agg.where, row_columns)
            if condition.type != pa.bool_():
                raise FeatureSpecError(path, f"{at}.where", f"`{agg.where}` is {condition.type}, not a condition",
                                       "write a comparison, e.g. `arr_delay > 15`")
        if agg.where is not None and agg.column is not None and agg.column not in row_columns:
            raise FeatureSpecError(path, f"{at}.where", f"'{agg.column}' comes from enrich, which conditions "
                                   "cannot mask", "aggregate a column of the source row, or derive one")
        if agg.function == "share" and (agg.where is None or agg.column is not None):
            raise FeatureSpecError(path, at, "share takes a condition and no column",
                                   "write e.g. {function: share, where: 'arr_delay > 15'}")
        if agg.function not in ("count", "share") and agg.column is None:
            raise FeatureSpecError(path, at, f"{agg.function} needs a column", f"add column: one of {sorted(columns)}")
        if agg.column is not None and agg.column not in columns:
            raise FeatureSpecError(path, f"{at}.column", f"unknown field '{agg.column}' in source '{view.source}'",
                                   f"use one of {sorted(columns)}")
        source_type = columns.get(agg.column)
        if agg.function in NUMERIC_ONLY and not (pa.types.is_integer(source_type) or pa.types.is_floating(source_type)):
            raise FeatureSpecError(path, at, f"{agg.function} needs a numeric column, '{agg.column}' is {source_type}",
                                   "use count, last, last_n or top_n for text")
        if agg.function in ("last_n", "top_n") and agg.n is None:
            raise FeatureSpecError(path, at, f"{agg.function} needs n", "add n: 10")
        if agg.function in ("distinct_count", "last_n") and window is not None:
            raise FeatureSpecError(path, f"{at}.window", f"{agg.function} supports window: all only",
                                   "use window: all")
        out[agg.name] = _output_type(agg, source_type)
        scalar = out[agg.name].value_type if pa.types.is_list(out[agg.name]) else out[agg.name]
        if scalar not in STORABLE:
            raise FeatureSpecError(path, at, f"'{agg.column}' is {source_type}, which the online store cannot hold",
                                   "aggregate a string, number, boolean or timestamp column")
    for i, t in enumerate(view.transforms):
        at = f"{where}.transforms[{i}] ({t.name})"
        for ref in (t.column, t.denominator) if t.function == "ratio" else (t.column,):
            if ref not in out:
                raise FeatureSpecError(path, at, f"unknown feature '{ref}'", f"use one of {sorted(out)}")
        if t.name in out:
            raise FeatureSpecError(path, at, f"name '{t.name}' is used twice", "give every feature a unique name")
        out[t.name] = pa.list_(pa.string()) if t.function == "split" else pa.float64()
    return out


def _check_enrich(path, project: Project, where: str, enrich: Enrich, columns: dict) -> dict:
    if enrich.source not in project.sources:
        raise FeatureSpecError(path, f"{where}.source", f"unknown source '{enrich.source}'", f"use one of {project.sources}")
    other = {f.name: arrow_type(f) for f in project.contract(enrich.source).fields}
    if enrich.key not in other or enrich.key not in columns:
        raise FeatureSpecError(path, f"{where}.key", f"'{enrich.key}' is not a field of both sources",
                               "join on a key both contracts declare")
    missing = [c for c in enrich.columns if c not in other]
    if missing:
        raise FeatureSpecError(path, f"{where}.columns", f"unknown fields {missing} in '{enrich.source}'",
                               f"use some of {sorted(other)}")
    return {c: other[c] for c in enrich.columns}


def _duration(path, where: str, text: str):
    try:
        return duration(text)
    except ValueError:
        raise FeatureSpecError(path, where, f"'{text}' is not a duration of at most {MAX_DAYS} days",
                               "write whole days, e.g. 7d, 30d, 365d, or all") from None


def _output_type(agg: Aggregation, source: pa.DataType | None) -> pa.DataType:
    if agg.function in ("count", "distinct_count"):
        return pa.int64()
    if agg.function in ("mean", "share"):
        return pa.float64()
    if agg.function == "last_n":
        return pa.list_(source)
    if agg.function == "top_n":
        return pa.list_(pa.string())
    return source
