"""Load an ODCS v3 contract file, check it, and compile it to a :class:`Contract`.

Three layers of checks, each error naming the file, the field and the fix:
YAML syntax, the ODCS JSON schema (through the ``open-data-contract-standard``
package), then what millrace needs (one schema object, known types, an
event-time field, a sane partitioning, rules that make sense).
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from millrace.contracts.errors import ContractError
from millrace.contracts.model import (
    GRANULARITIES,
    SUPPORTED_LOGICAL_TYPES,
    TIMESTAMP_ENCODINGS,
    Contract,
    Field,
    Partitioning,
    TableCheck,
)

_OPERATORS = (
    "mustBe", "mustNotBe", "mustBeGreaterThan", "mustBeGreaterOrEqualTo",
    "mustBeLessThan", "mustBeLessOrEqualTo", "mustBeBetween", "mustNotBeBetween",
)
_TABLE_METRICS = ("rowCount", "nullValues", "missingValues", "duplicateValues")
_NON_BLOCKING = ("warning", "warn", "info", "minor")


@lru_cache(maxsize=1)
def _odcs_validator():
    import jsonschema
    from open_data_contract_standard.model import OpenDataContractStandard

    schema = json.loads(OpenDataContractStandard.json_schema())
    return jsonschema.Draft201909Validator(schema)


def _path_of(error) -> str:
    parts = []
    for p in error.absolute_path:
        parts.append(f"[{p}]" if isinstance(p, int) else (f".{p}" if parts else str(p)))
    return "".join(parts) or "(top level)"


def read_yaml(path: Path) -> Any:
    if not path.exists():
        raise ContractError(path, "(file)", "does not exist", "check the path")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ContractError(path, "(file)", "is not UTF-8 text", "save the file as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "(yaml)"
        raise ContractError(path, where, f"invalid YAML: {getattr(exc, 'problem', exc)}",
                            "fix the YAML syntax") from None


def load_contract(path: str | Path) -> Contract:
    path = Path(path)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ContractError(path, "(top level)", "is not a mapping", "write an ODCS v3 contract (apiVersion, kind, id, version, schema)")
    errors = sorted(_odcs_validator().iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        best = _best_error(errors)
        raise ContractError(path, _path_of(best), best.message.splitlines()[0][:300],
                            "follow the Open Data Contract Standard v3 schema")
    from open_data_contract_standard.model import OpenDataContractStandard
    try:
        model = OpenDataContractStandard(**data)
    except Exception as exc:  # pydantic.ValidationError
        first = exc.errors()[0] if hasattr(exc, "errors") else {"loc": (), "msg": str(exc)}
        loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ContractError(path, loc, first["msg"], "follow the Open Data Contract Standard v3 schema") from None
    return _compile(path, model, data)


def _best_error(errors):
    # jsonschema reports one error per failed branch of oneOf/if-then; the deepest is the useful one.
    import jsonschema

    return jsonschema.exceptions.best_match(errors)


def _custom(props) -> dict[str, Any]:
    return {p.property: p.value for p in (props or []) if p.property}


def _compile(path: Path, model, data: dict) -> Contract:
    for required in ("id", "version"):
        if not getattr(model, required):
            raise ContractError(path, required, "is missing", f"add a top-level '{required}'")
    if not re.fullmatch(r"\d+\.\d+\.\d+", model.version):
        raise ContractError(path, "version", f"'{model.version}' is not MAJOR.MINOR.PATCH",
                            "use semantic versioning, e.g. 1.0.0")
    objects = model.schema_ or []
    if len(objects) != 1:
        raise ContractError(path, "schema", f"has {len(objects)} objects, millrace needs exactly one",
                            "declare one schema object per contract file")
    obj = objects[0]
    where = "schema[0]"
    if not obj.properties:
        raise ContractError(path, f"{where}.properties", "is empty", "declare the fields of the source")
    fields = tuple(_compile_field(path, f"{where}.properties[{i}]", p) for i, p in enumerate(obj.properties))
    names = [f.name for f in fields]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ContractError(path, f"{where}.properties", f"field names repeat: {dupes}", "give every field a unique name")
    keys = [f for f in fields if f.is_key]
    if not keys:
        raise ContractError(path, f"{where}.properties", "no field has primaryKey: true",
                            "mark the key field(s) with primaryKey: true and primaryKeyPosition")
    positions = sorted(f.primary_key_position for f in keys)
    if positions != list(range(1, len(keys) + 1)):
        raise ContractError(path, f"{where}.properties", f"primaryKeyPosition values {positions} are not 1..{len(keys)}",
                            "number the key fields 1, 2, ...")

    custom = _custom(obj.customProperties)
    event_time = custom.get("eventTime")
    if event_time is not None:
        if event_time not in names:
            raise ContractError(path, f"{where}.customProperties.eventTime", f"names unknown field '{event_time}'",
                                f"use one of {names}")
        if fields[names.index(event_time)].logical_type != "timestamp":
            raise ContractError(path, f"{where}.customProperties.eventTime", f"field '{event_time}' is not a timestamp",
                                "point eventTime at a field with logicalType: timestamp")
    granularity = custom.get("partitionGranularity", "month" if event_time else "day")
    if granularity not in GRANULARITIES:
        raise ContractError(path, f"{where}.customProperties.partitionGranularity", f"'{granularity}' is not supported",
                            f"use one of {list(GRANULARITIES)}")
    partitioned = [p.name for p in obj.properties if p.partitioned]
    if partitioned and partitioned != [event_time]:
        raise ContractError(path, f"{where}.properties", f"partitioned fields {partitioned} differ from eventTime '{event_time}'",
                            "partition by the event-time field only (partitioned: true on it)")
    partition_key = str(custom.get("partitionKey", granularity if event_time else "dt"))
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", partition_key) or partition_key in names:
        raise ContractError(path, f"{where}.customProperties.partitionKey", f"'{partition_key}' is not a usable partition column",
                            "use a lower_snake_case name that is not a field name")
    threshold = custom.get("quarantineThreshold", 0.05)
    if not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise ContractError(path, f"{where}.customProperties.quarantineThreshold", f"{threshold!r} is not a share in [0, 1]",
                            "write e.g. 0.05 for 5%")
    tolerance = custom.get("futureToleranceSeconds", 86400)
    if not isinstance(tolerance, int) or tolerance < 0:
        raise ContractError(path, f"{where}.customProperties.futureToleranceSeconds", f"{tolerance!r} is not a whole number of seconds",
                            "write e.g. 86400")
    checks = list(_table_checks(path, f"{where}.quality", obj.quality, None))
    for i, p in enumerate(obj.properties):
        checks.extend(_table_checks(path, f"{where}.properties[{i}].quality", p.quality, p.name))
    return Contract(
        path=str(path), id=model.id, name=model.name or obj.name or path.stem, version=model.version,
        object_name=obj.name or path.stem, fields=fields,
        partitioning=Partitioning(key=partition_key, granularity=granularity, field=event_time),
        event_time=event_time, quarantine_threshold=float(threshold), future_tolerance_seconds=tolerance,
        table_checks=tuple(checks), raw=data,
    )


def _compile_field(path: Path, where: str, prop) -> Field:
    if not prop.name:
        raise ContractError(path, f"{where}.name", "is missing", "name every property")
    where = f"{where} ({prop.name})"
    logical = prop.logicalType
    if logical not in SUPPORTED_LOGICAL_TYPES:
        raise ContractError(path, f"{where}.logicalType", f"'{logical}' is not supported for ingestion",
                            f"use one of {list(SUPPORTED_LOGICAL_TYPES)}")
    if logical == "timestamp" and (prop.physicalType or "iso8601") not in TIMESTAMP_ENCODINGS:
        raise ContractError(path, f"{where}.physicalType", f"'{prop.physicalType}' is not a known timestamp encoding",
                            f"use one of {list(TIMESTAMP_ENCODINGS)}")
    opts = prop.logicalTypeOptions or {}
    enum = tuple(e.value for e in (prop.enum or []))
    pattern = opts.get("pattern")
    for q in prop.quality or []:
        args = q.arguments or {}
        if (q.metric or q.rule) == "invalidValues" and "validValues" in args:
            enum = tuple(args["validValues"])
        if (q.metric or q.rule) == "invalidValues" and "pattern" in args:
            pattern = args["pattern"]
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ContractError(path, f"{where}.logicalTypeOptions.pattern", f"invalid regular expression: {exc}",
                                "write a valid regular expression") from None
    lo, hi = opts.get("minimum"), opts.get("maximum")
    if lo is not None and hi is not None and lo > hi:
        raise ContractError(path, f"{where}.logicalTypeOptions", f"minimum {lo} is above maximum {hi}",
                            "swap or correct the bounds")
    if prop.primaryKey and prop.required is False:
        raise ContractError(path, f"{where}.required", "a primary key field cannot be optional", "set required: true")
    return Field(
        name=prop.name, logical_type=logical, physical_type=prop.physicalType,
        required=bool(prop.required or prop.primaryKey),
        primary_key_position=(prop.primaryKeyPosition or 1) if prop.primaryKey else None,
        minimum=lo, maximum=hi, exclusive_minimum=opts.get("exclusiveMinimum"),
        exclusive_maximum=opts.get("exclusiveMaximum"), enum=enum, pattern=pattern,
        min_length=opts.get("minLength"), max_length=opts.get("maxLength"),
        description=prop.description or "",
    )


def _table_checks(path: Path, where: str, quality, column: str | None):
    for i, q in enumerate(quality or []):
        metric = q.metric or q.rule
        if metric not in _TABLE_METRICS:
            continue  # invalidValues rules are row rules, compiled into the Field
        ops = [(op, getattr(q, op)) for op in _OPERATORS if getattr(q, op) is not None]
        if len(ops) != 1:
            raise ContractError(path, f"{where}[{i}]", f"metric '{metric}' needs exactly one operator, got {len(ops)}",
                                "add one of mustBe, mustBeGreaterThan, mustBeLessOrEqualTo, mustBeBetween, ...")
        if metric != "rowCount" and column is None:
            raise ContractError(path, f"{where}[{i}]", f"metric '{metric}' belongs on a property", "move it under the property's quality")
        yield TableCheck(metric=metric, column=column, operator=ops[0][0], value=ops[0][1], unit=q.unit,
                         blocking=(q.severity or "error").lower() not in _NON_BLOCKING, name=q.name or metric)
