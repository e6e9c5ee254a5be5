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

from millrace.contracts import values
from millrace.contracts.values import describe
from millrace.contracts.errors import ContractError
from millrace.contracts.names import check_name
from millrace.contracts.model import (
    GRANULARITIES,
    SUPPORTED_LOGICAL_TYPES,
    LEGACY_STORED_TYPES,
    STORED_TYPES,
    TIMESTAMP_ENCODINGS,
    Contract,
    ContractWarning,
    Field,
    LandingFormat,
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


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing what it would otherwise take silently or crash on: a key
    given twice in one mapping (the last one wins without a word) and integers too long to convert."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(None, None, "a mapping key is a list or mapping",
                                                        key_node.start_mark) from None
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {str(key)[:60]!r} appears twice",
                                                        key_node.start_mark)
            seen[key] = True
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node):
        try:
            return super().construct_yaml_int(node)
        except ValueError:
            raise yaml.constructor.ConstructorError(None, None, "an integer too long to read",
                                                    node.start_mark) from None


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _StrictLoader.construct_yaml_int)
_StrictLoader.add_constructor("tag:yaml.org,2002:map", _StrictLoader.construct_yaml_map)


def read_yaml(path: Path) -> Any:
    """The YAML document in ``path`` (None when it is empty), or one ContractError line."""
    path = Path(path)
    if not path.exists():
        raise ContractError(path, "(file)", "does not exist", "check the path")
    if not path.is_file():
        raise ContractError(path, "(file)", "is not a file", "point at a YAML file, not a folder")
    try:
        return yaml.load(path.read_bytes().decode("utf-8"), Loader=_StrictLoader)
    except UnicodeDecodeError:
        raise ContractError(path, "(file)", "is not UTF-8 text", "save the file as UTF-8") from None
    except OSError as exc:
        raise ContractError(path, "(file)", f"cannot be read: {exc.strerror or exc}", "check its permissions") from None
    except RecursionError:
        raise ContractError(path, "(yaml)", "is nested too deeply", "flatten the YAML") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "(yaml)"
        raise ContractError(path, where, f"invalid YAML: {getattr(exc, 'problem', None) or exc}",
                            "fix the YAML syntax") from None


def load_contract(path: str | Path) -> Contract:
    path = Path(path)
    data = read_yaml(path)
    odcs = "write an ODCS v3 contract (apiVersion, kind, id, version, schema)"
    if data is None:
        raise ContractError(path, "(file)", "is empty", odcs)
    if not isinstance(data, dict):
        raise ContractError(path, "(top level)", f"is {describe(data)}, where a mapping belongs", odcs)
    errors = list(_odcs_validator().iter_errors(data))
    if errors:
        where, problem = _schema_problem(errors)
        raise ContractError(path, where, problem, "follow the Open Data Contract Standard v3 schema")
    from open_data_contract_standard.model import OpenDataContractStandard
    try:
        model = OpenDataContractStandard(**data)
    except Exception as exc:  # pydantic.ValidationError
        first = exc.errors()[0] if hasattr(exc, "errors") else {"loc": (), "msg": str(exc)}
        loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ContractError(path, loc, first["msg"], "follow the Open Data Contract Standard v3 schema") from None
    return _compile(path, model, data)


def _leaves(errors):
    for e in errors:
        if e.context:
            yield from _leaves(e.context)
        else:
            yield e


def _schema_problem(errors) -> tuple[str, str]:
    """The one schema error worth showing: the deepest leaf (a failed oneOf/anyOf reports each
    branch; "unevaluated properties" is only the echo of a failed branch, so it comes last).
    Sibling leaves at the same place are merged ("needs one of: mustBe, mustBeLessThan, ...")."""
    leaves = list(_leaves(errors))
    best = max(leaves, key=lambda e: (e.validator != "unevaluatedProperties", len(e.absolute_path),
                                      e.validator == "type"))
    where = _path_of(best)
    same = [e for e in leaves if _path_of(e) == where and e.validator == best.validator]
    if best.validator == "required" and len(same) > 1:
        names = dict.fromkeys(", ".join(map(str, e.validator_value)) for e in same)
        return where, f"needs one of: {', '.join(names)}"
    if best.validator == "type":
        kinds = dict.fromkeys(_JSON_KINDS.get(str(e.validator_value), str(e.validator_value)) for e in same)
        return where, f"is {describe(best.instance)}, where {' or '.join(kinds)} belongs"
    if best.validator == "enum":
        return where, f"{describe(best.instance)} is not one of {best.validator_value}"[:300]
    message = best.message
    if message.startswith(repr(best.instance)):
        message = describe(best.instance) + message[len(repr(best.instance)):]
    return where, " ".join(message.split())[:300]


_JSON_KINDS = {"array": "a list", "object": "a mapping", "string": "text", "number": "a number",
               "integer": "a whole number", "boolean": "true or false", "null": "nothing"}


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
    warnings: list[ContractWarning] = []
    fields = tuple(_compile_field(path, f"{where}.properties[{i}]", p, warnings) for i, p in enumerate(obj.properties))
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
    at = f"{where}.customProperties"
    event_time = custom.get("eventTime")
    if event_time is not None:
        if not isinstance(event_time, str) or event_time not in names:
            raise ContractError(path, f"{at}.eventTime", f"names unknown field {describe(event_time)}",
                                f"use one of {names}")
        if fields[names.index(event_time)].logical_type != "timestamp":
            raise ContractError(path, f"{at}.eventTime", f"field '{event_time}' is not a timestamp",
                                "point eventTime at a field with logicalType: timestamp")
    granularity = custom.get("partitionGranularity", "month" if event_time else "day")
    if not isinstance(granularity, str) or granularity not in GRANULARITIES:
        raise ContractError(path, f"{at}.partitionGranularity", f"{describe(granularity)} is not supported",
                            f"use one of {list(GRANULARITIES)}")
    partitioned = [p.name for p in obj.properties if p.partitioned]
    if partitioned and partitioned != [event_time]:
        raise ContractError(path, f"{where}.properties", f"partitioned fields {partitioned} differ from eventTime '{event_time}'",
                            "partition by the event-time field only (partitioned: true on it)")
    partition_key = custom.get("partitionKey", granularity if event_time else "dt")
    if not isinstance(partition_key, str) or not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", partition_key) \
            or partition_key in names:
        raise ContractError(path, f"{at}.partitionKey", f"{describe(partition_key)} is not a usable partition column",
                            "use a lower_snake_case name that is not a field name")
    threshold = custom.get("quarantineThreshold", 0.05)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise ContractError(path, f"{at}.quarantineThreshold", f"{describe(threshold)} is not a share in [0, 1]",
                            "write e.g. 0.05 for 5%")
    tolerance = custom.get("futureToleranceSeconds", 86400)
    tolerance = values.count(tolerance, path, f"{at}.futureToleranceSeconds", values.SECONDS_MAX)
    checks = list(_table_checks(path, f"{where}.quality", obj.quality, None))
    for i, p in enumerate(obj.properties):
        checks.extend(_table_checks(path, f"{where}.properties[{i}].quality", p.quality, p.name))
    return Contract(
        path=str(path), id=model.id, name=model.name or obj.name or path.stem, version=model.version,
        fields=fields,
        partitioning=Partitioning(key=partition_key, granularity=granularity, field=event_time),
        event_time=event_time, quarantine_threshold=float(threshold), future_tolerance_seconds=tolerance,
        table_checks=tuple(checks), landing=_landing_format(path, at, custom), raw=data, warnings=tuple(warnings),
    )


def _one_char(path: Path, at: str, value, default: str, what: str) -> str:
    if value is None:
        return default
    if not isinstance(value, str) or len(value) != 1 or value in "\r\n":
        raise ContractError(path, at, f"{describe(value)} is not one character",
                            f"write one {what} character in quotes, e.g. '{default}'")
    return value


def _landing_format(path: Path, at: str, custom: dict) -> LandingFormat:
    """csvDelimiter, csvQuote and nullTokens: how the source's landing files spell fields and nulls."""
    delimiter = _one_char(path, f"{at}.csvDelimiter", custom.get("csvDelimiter"), ",", "delimiter")
    quote = _one_char(path, f"{at}.csvQuote", custom.get("csvQuote"), '"', "quote")
    if delimiter == quote:
        raise ContractError(path, f"{at}.csvQuote", f"'{quote}' is also the delimiter",
                            "use different characters for csvDelimiter and csvQuote")
    tokens = custom.get("nullTokens", [""])
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise ContractError(path, f"{at}.nullTokens", f"is {describe(tokens)}, where a list of texts belongs",
                            "list the texts read as null in quotes, e.g. ['', 'NA', 'null']")
    # Cells are compared with surrounding whitespace trimmed, as coercion reads them.
    return LandingFormat(csv_delimiter=delimiter, csv_quote=quote,
                         null_tokens=tuple(dict.fromkeys([""] + [t.strip() for t in tokens])))


def _compile_field(path: Path, where: str, prop, warnings: list[ContractWarning]) -> Field:
    if not prop.name:
        raise ContractError(path, f"{where}.name", "is missing", "name every property")
    # Field names become Arrow columns, feature names and Feast fields: the one name rule.
    check_name(prop.name, path, f"{where}.name")
    where = f"{where} ({prop.name})"
    logical = prop.logicalType
    if logical not in SUPPORTED_LOGICAL_TYPES:
        raise ContractError(path, f"{where}.logicalType", f"{describe(logical)} is not supported for ingestion",
                            f"use one of {list(SUPPORTED_LOGICAL_TYPES)}")
    encoding = _landing_encoding(path, where, prop, warnings)
    opts = prop.logicalTypeOptions or {}
    at = f"{where}.logicalTypeOptions"
    _unsupported_options(path, at, opts)
    enum = tuple(values.enum_value(e.value, path, f"{where}.enum[{i}]", logical) for i, e in enumerate(prop.enum or []))
    pattern = opts.get("pattern")
    pattern_at = f"{at}.pattern"
    for i, q in enumerate(prop.quality or []):
        args = q.arguments or {}
        if (q.metric or q.rule) != "invalidValues":
            continue
        q_at = f"{where}.quality[{i}].arguments"
        if "validValues" in args:
            allowed = args["validValues"]
            if not isinstance(allowed, list) or not allowed:
                raise ContractError(path, f"{q_at}.validValues", f"is {describe(allowed)}, where a list of values belongs",
                                    "list the allowed values, e.g. [a, b]")
            enum = tuple(values.enum_value(v, path, f"{q_at}.validValues[{j}]", logical) for j, v in enumerate(allowed))
        if "pattern" in args:
            pattern, pattern_at = args["pattern"], f"{q_at}.pattern"
    if pattern is not None:
        if not isinstance(pattern, str):
            raise ContractError(path, pattern_at, f"is {describe(pattern)}, where a regular expression belongs",
                                "write the pattern as quoted text")
        if logical != "string":
            raise ContractError(path, pattern_at, f"a pattern does not apply to {logical} fields",
                                "remove it, or make the field a string")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ContractError(path, pattern_at, f"invalid regular expression: {exc}",
                                "write a valid regular expression") from None
    bounds = {k: values.bound(opts.get(k), path, f"{at}.{k}", logical)
              for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")}
    lo, hi = bounds["minimum"], bounds["maximum"]
    if lo is not None and hi is not None and lo > hi:
        raise ContractError(path, at, f"minimum {lo} is above maximum {hi}", "swap or correct the bounds")
    lengths = {k: None if opts.get(k) is None else values.count(opts[k], path, f"{at}.{k}", values.LENGTH_MAX)
               for k in ("minLength", "maxLength")}
    if None not in lengths.values() and lengths["minLength"] > lengths["maxLength"]:
        raise ContractError(path, at, f"minLength {lengths['minLength']} is above maxLength {lengths['maxLength']}",
                            "swap or correct the lengths")
    if prop.primaryKey and prop.required is False:
        raise ContractError(path, f"{where}.required", "a primary key field cannot be optional", "set required: true")
    position = None
    if prop.primaryKey:
        position = 1 if prop.primaryKeyPosition in (None, -1) else \
            values.count(prop.primaryKeyPosition, path, f"{where}.primaryKeyPosition", 1000, minimum=1)
    return Field(
        name=prop.name, logical_type=logical, landing_encoding=encoding,
        required=bool(prop.required or prop.primaryKey), primary_key_position=position,
        minimum=lo, maximum=hi, exclusive_minimum=bounds["exclusiveMinimum"],
        exclusive_maximum=bounds["exclusiveMaximum"], enum=enum, pattern=pattern,
        min_length=lengths["minLength"], max_length=lengths["maxLength"],
        description=prop.description or "",
    )


def _landing_encoding(path: Path, where: str, prop, warnings: list[ContractWarning]) -> str | None:
    """A timestamp's landing encoding (None for other fields), with ``physicalType`` checked to be the
    type the lake stores. The encoding belongs in the property's customProperty ``landingEncoding``;
    the older spelling, the encoding in ``physicalType``, is still read, with a warning."""
    logical, stated = prop.logicalType, prop.physicalType
    at = f"{where}.customProperties.landingEncoding"
    encoding = _custom(prop.customProperties).get("landingEncoding")
    if encoding is not None and logical != "timestamp":
        raise ContractError(path, at, f"a landing encoding does not apply to {logical} fields",
                            "remove it (only timestamps have one)")
    if encoding is not None and encoding not in TIMESTAMP_ENCODINGS:
        raise ContractError(path, at, f"{describe(encoding)} is not a known timestamp encoding",
                            f"use one of {list(TIMESTAMP_ENCODINGS)}")
    stored = STORED_TYPES[logical]
    if stated is None or stated.lower() in stored:
        return (encoding or "iso8601") if logical == "timestamp" else None
    type_at = f"{where}.physicalType"
    if logical == "timestamp" and stated in TIMESTAMP_ENCODINGS:
        if encoding is not None and encoding != stated:
            raise ContractError(path, type_at, f"'{stated}' disagrees with landingEncoding '{encoding}'",
                                f"write physicalType: {stored[0]} and keep the encoding in landingEncoding only")
        fix = (f"write physicalType: {stored[0]}" if encoding else
               f"write physicalType: {stored[0]} and customProperties: [{{property: landingEncoding, value: {stated}}}]")
        warnings.append(ContractWarning(str(path), type_at, f"'{stated}' is a landing encoding, a deprecated spelling "
                                        "(stock ODCS tools read physicalType as the stored type)", fix))
        return stated
    legacy = LEGACY_STORED_TYPES.get(logical, {}).get(stated.lower())
    if legacy is not None:
        warnings.append(ContractWarning(str(path), type_at, f"'{stated}' is a deprecated spelling that stock ODCS "
                                        "tools do not read", f"write physicalType: {legacy}"))
        return None
    more = f" and the landing encoding in customProperties landingEncoding (one of {list(TIMESTAMP_ENCODINGS)})" \
        if logical == "timestamp" else ""
    raise ContractError(path, type_at, f"{describe(stated)} is not the type millrace stores for a {logical} field",
                        f"write physicalType: {stored[0]} (or one of {list(stored)}), or remove it{more}")


def _unsupported_options(path: Path, at: str, opts: dict) -> None:
    """Options ODCS allows that millrace would otherwise ignore: refusing them beats accepting rows they forbid."""
    if "multipleOf" in opts:
        raise ContractError(path, f"{at}.multipleOf", "is not enforced by millrace",
                            "remove it, or list the allowed values with enum")
    zone = opts.get("defaultTimezone")
    if zone not in (None, "UTC", "Etc/UTC"):
        raise ContractError(path, f"{at}.defaultTimezone", f"{describe(zone)} is not supported (naive times are read as UTC)",
                            "write the times with an offset, or remove defaultTimezone")


_UPPER = ("mustBe", "mustBeLessThan", "mustBeLessOrEqualTo", "mustBeBetween")


def _table_checks(path: Path, where: str, quality, column: str | None):
    for i, q in enumerate(quality or []):
        metric = q.metric or q.rule
        if metric not in _TABLE_METRICS:
            continue  # invalidValues rules are row rules, compiled into the Field
        at = f"{where}[{i}]"
        ops = [(op, getattr(q, op)) for op in _OPERATORS if getattr(q, op) is not None]
        if len(ops) != 1:
            raise ContractError(path, at, f"metric '{metric}' needs exactly one operator, got {len(ops)}",
                                "add one of mustBe, mustBeGreaterThan, mustBeLessOrEqualTo, mustBeBetween, ...")
        if metric != "rowCount" and column is None:
            raise ContractError(path, at, f"metric '{metric}' belongs on a property", "move it under the property's quality")
        operator, value = ops[0]
        if operator in ("mustNotBe", "mustNotBeBetween"):
            raise ContractError(path, f"{at}.{operator}", "is not supported for dataset-level metrics",
                                "state the allowed range with mustBe, mustBeGreaterThan, mustBeLessThan or mustBeBetween")
        if metric != "rowCount" and operator not in _UPPER:
            raise ContractError(path, f"{at}.{operator}", f"metric '{metric}' needs an upper bound",
                                "use mustBe 0, mustBeLessThan or mustBeLessOrEqualTo")
        if q.unit not in (None, "rows", "percent"):
            raise ContractError(path, f"{at}.unit", f"{describe(q.unit)} is not a unit millrace knows",
                                "use rows or percent")
        if isinstance(value, list):
            value = [values.number(v, path, f"{at}.{operator}[{j}]", integer=metric == "rowCount")
                     for j, v in enumerate(value)]
            if value[0] > value[1]:
                raise ContractError(path, f"{at}.{operator}", f"{value} is not [low, high]", "put the smaller number first")
        else:
            value = values.number(value, path, f"{at}.{operator}", integer=metric == "rowCount")
        if q.unit == "percent" and not all(0 <= v <= 100 for v in (value if isinstance(value, list) else [value])):
            raise ContractError(path, f"{at}.{operator}", f"{value} is not a percentage", "use a value from 0 to 100")
        yield TableCheck(metric=metric, column=column, operator=operator, value=value, unit=q.unit,
                         blocking=(q.severity or "error").lower() not in _NON_BLOCKING, name=q.name or metric)
