"""Great Expectations suites generated from a contract, run on a partition before it is committed.

The suite is derived, never hand-written: column set, not-null for required
fields, ranges, enums, patterns, lengths, key uniqueness and the contract's
dataset-level quality rules (rowCount, nullValues, duplicateValues). Expectations
from rules marked ``severity: warning``/``info`` are reported but do not block.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import pyarrow as pa

from millrace.contracts.model import Contract, TableCheck
from millrace.validation.records import ExpectationsReport

_FAILURE_SEVERITY = {True: "critical", False: "warning"}
_ROW_COUNTS = ("expect_table_row_count_to_be_between", "expect_table_row_count_to_equal")


@dataclass(frozen=True)
class SuiteResult:
    """One partition's verdict: the typed report that is written beside it (its ``great_expectations``
    document is what Data Docs store and render, ``validation.data_docs``), and GE's result object."""

    report: ExpectationsReport
    validation: object = field(default=None, compare=False, repr=False)

    @property
    def success(self) -> bool:
        return self.report.success

    @property
    def failed_blocking(self) -> tuple[str, ...]:
        return self.report.failed_blocking

    @property
    def failed_warnings(self) -> tuple[str, ...]:
        return self.report.failed_warnings

    def to_json(self) -> bytes:
        return self.report.to_json().encode()


def build_suite(contract: Contract):
    import great_expectations as gx
    import great_expectations.expectations as gxe

    # Expectations are collected first and given to the suite at once: ``add_expectation`` looks the
    # suite up in GX's current context, and the driver building it for Data Docs may have none.
    expectations: list = []
    add = expectations.append
    add(gxe.ExpectTableColumnsToMatchSet(column_set=list(contract.field_names), exact_match=True))
    for f in contract.fields:
        if f.required:
            add(gxe.ExpectColumnValuesToNotBeNull(column=f.name))
        if f.logical_type in ("integer", "number") and (f.minimum is not None or f.maximum is not None
                                                         or f.exclusive_minimum is not None or f.exclusive_maximum is not None):
            add(gxe.ExpectColumnValuesToBeBetween(
                column=f.name,
                min_value=f.minimum if f.minimum is not None else f.exclusive_minimum,
                max_value=f.maximum if f.maximum is not None else f.exclusive_maximum,
                strict_min=f.minimum is None and f.exclusive_minimum is not None,
                strict_max=f.maximum is None and f.exclusive_maximum is not None))
        if f.enum:
            add(gxe.ExpectColumnValuesToBeInSet(column=f.name, value_set=list(f.enum)))
        if f.pattern is not None:
            add(gxe.ExpectColumnValuesToMatchRegex(column=f.name, regex=f.pattern))
        if f.min_length is not None or f.max_length is not None:
            add(gxe.ExpectColumnValueLengthsToBeBetween(column=f.name, min_value=f.min_length, max_value=f.max_length))
    keys = list(contract.key_fields)
    if len(keys) == 1:
        add(gxe.ExpectColumnValuesToBeUnique(column=keys[0]))
    else:
        add(gxe.ExpectCompoundColumnsToBeUnique(column_list=keys))
    for check in contract.table_checks:
        add(_table_expectation(gxe, check))
    return gx.ExpectationSuite(name=f"{contract.name}-{contract.version}", expectations=expectations)


def _table_expectation(gxe, check: TableCheck):
    severity = _FAILURE_SEVERITY[check.blocking]
    lo, hi, strict_lo, strict_hi = _bounds(check)
    if check.metric == "rowCount":
        lo = None if lo is None else (int(lo) + 1 if strict_lo else int(lo))
        hi = None if hi is None else (int(hi) - 1 if strict_hi else int(hi))
        return gxe.ExpectTableRowCountToBeBetween(min_value=lo, max_value=hi, severity=severity)
    # nullValues / missingValues / duplicateValues: a bound on the count or percent of offending rows.
    # GE expresses this as "mostly": the share of rows that must be fine.
    if hi is None:
        raise ValueError(f"{check.metric} needs an upper bound (mustBeLessThan, mustBeLessOrEqualTo, mustBe 0)")
    share = hi / 100 if check.unit == "percent" else None
    mostly = 1.0 if share is None else max(0.0, 1.0 - share)
    if check.metric == "duplicateValues":
        return gxe.ExpectColumnValuesToBeUnique(column=check.column, mostly=mostly, severity=severity)
    return gxe.ExpectColumnValuesToNotBeNull(column=check.column, mostly=mostly, severity=severity)


def _bounds(check: TableCheck):
    v, op = check.value, check.operator
    return {
        "mustBe": (v, v, False, False),
        "mustBeGreaterThan": (v, None, True, False),
        "mustBeGreaterOrEqualTo": (v, None, False, False),
        "mustBeLessThan": (None, v, False, True),
        "mustBeLessOrEqualTo": (None, v, False, False),
        "mustBeBetween": (v[0], v[1], False, False) if isinstance(v, list) else (None, None, False, False),
    }.get(op, (None, None, False, False))


@dataclass(frozen=True)
class BundleResult:
    """The verdicts of several partitions validated together: one ``SuiteResult`` per partition, and
    the validation of all their rows stacked (None for a single partition), whose Data Docs page
    stands for every partition that passed."""

    partitions: dict[str, SuiteResult]
    whole: SuiteResult | None = None


def subset_closed(expectation) -> bool:
    """Whether the expectation holds on every part of a table whenever it holds on the whole.

    True for the column set (each part has exactly the whole's columns) and for row-by-row
    expectations that allow no exception (``mostly`` = 1, no row condition): a part's unexpected
    rows are among the whole's, so none in the whole means none in a part. Uniqueness is one of
    them: a key repeated within a part is repeated in the whole. Not for table metrics (row
    count) or a ``mostly`` below 1, which say nothing about a part."""
    from great_expectations.expectations.expectation import ColumnMapExpectation, MulticolumnMapExpectation
    import great_expectations.expectations as gxe

    if isinstance(expectation, gxe.ExpectTableColumnsToMatchSet):
        return True
    if not isinstance(expectation, (ColumnMapExpectation, MulticolumnMapExpectation)):
        return False
    return getattr(expectation, "row_condition", None) is None and float(getattr(expectation, "mostly", 1)) == 1.0


class SuiteRunner:
    """An ephemeral GE context with the contract's suite, reused for every partition of a run."""

    def __init__(self, contract: Contract):
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.contract = contract
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        source = self.context.data_sources.add_pandas("millrace")
        asset = source.add_dataframe_asset(contract.name)
        self.batch_definition = asset.add_batch_definition_whole_dataframe("partition")
        self.suite = self.context.suites.add(build_suite(contract))
        self._closed = [subset_closed(e) for e in self.suite.expectations]
        self._parts: dict[tuple[int, ...], object] = {}  # sub-suites by expectation positions

    def validate(self, table: pa.Table) -> SuiteResult:
        """The whole suite on one partition's rows."""
        return self._report(self._run(self.suite, table))

    def validate_many(self, tables: dict[str, pa.Table]) -> BundleResult:
        """The suite on several partitions at once, each partition's verdict as if validated alone.

        GE validates all rows stacked, once. An expectation that is ``subset_closed`` and held on
        the stack holds on each partition, and that result stands for it (marked in its ``meta``).
        Every other expectation (table metrics such as the row count, a ``mostly`` below 1, and any
        expectation that failed on the stack) is validated by GE on each partition alone, so a
        failure is always judged, and reported, on the partition's own rows."""
        if len(tables) <= 1:
            return BundleResult({p: self.validate(t) for p, t in tables.items()})
        names = list(self.contract.field_names)
        stacked = pa.concat_tables([t.select(names) for t in tables.values()])
        whole = self._run(self.suite, stacked)
        by_key = {_key(r.expectation_config): r for r in whole.results}
        held = [closed and bool(by_key[_key(e.configuration)].success)
                for closed, e in zip(self._closed, self.suite.expectations)]
        rest = tuple(i for i, h in enumerate(held) if not h)
        marker = {"millrace": {"validated_on": "stacked partitions", "partitions": len(tables),
                               "rows": stacked.num_rows}}
        # Results in the order GE gave them for the whole suite, as a partition validated alone gets them.
        decided = {_key(e.configuration): h for h, e in zip(held, self.suite.expectations)}
        keys = [_key(r.expectation_config) for r in whole.results]
        held = [decided[k] for k in keys]
        shared = {k: _marked(by_key[k], marker) for k, h in zip(keys, held) if h}
        documents = {id(r): r.to_json_dict() for r in shared.values()}  # serialized once, not per partition
        # Row counts need no column: GE then counts a frame of the partition's length, none converted.
        columns = any(self.suite.expectations[i].expectation_type not in _ROW_COUNTS for i in rest)
        out = {}
        for partition, table in tables.items():
            own = self._run(self._part_suite(rest), table, columns) if rest else None
            own_by_key = {_key(r.expectation_config): r for r in own.results} if own else {}
            results = [shared[k] if h else own_by_key[k] for k, h in zip(keys, held)]
            out[partition] = self._report(_combined(self.suite.name, results, own or whole, partition), documents)
        return BundleResult(out, self._report(whole))

    def _part_suite(self, positions: tuple[int, ...]):
        """The suite's expectations at ``positions``, as a suite of their own (built once)."""
        if positions not in self._parts:
            import copy

            import great_expectations as gx

            expectations = [copy.copy(self.suite.expectations[i]) for i in positions]
            name = f"{self.suite.name}-part-{len(self._parts)}"
            self._parts[positions] = self.context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
        return self._parts[positions]

    def _run(self, suite, table: pa.Table, columns: bool = True):
        if columns:
            frame = table.select(list(self.contract.field_names)).to_pandas(types_mapper=None)
        else:
            import pandas as pd

            frame = pd.DataFrame(index=pd.RangeIndex(table.num_rows))
        batch = self.batch_definition.get_batch(batch_parameters={"dataframe": frame})
        return batch.validate(suite, result_format="SUMMARY")

    def _report(self, result, documents: dict | None = None) -> SuiteResult:
        """The typed report of a suite result; ``documents``: results already serialized, by id."""
        blocking, warnings = [], []
        for r in result.results:
            if r.success:
                continue
            cfg = r.expectation_config
            label = f"{cfg.type}({_describe(cfg.kwargs)})"
            severity = str(getattr(cfg, "severity", "critical")).lower()
            (warnings if severity.endswith(("warning", "info")) else blocking).append(label)
        report = ExpectationsReport(suite=self.suite.name, success=not blocking, evaluated=len(result.results),
                                    failed_blocking=tuple(blocking), failed_warnings=tuple(warnings),
                                    great_expectations=_document(result, documents or {}))
        return SuiteResult(report=report, validation=result)


def _key(cfg) -> str:
    """An expectation's identity across suites and batches: its type, arguments and severity (not
    its id, nor the batch a result was computed on)."""
    kwargs = {k: v for k, v in cfg.kwargs.items() if k != "batch_id"}
    return json.dumps([cfg.type, kwargs, str(getattr(cfg, "severity", ""))], sort_keys=True, default=str)


def _document(result, documents: dict) -> dict:
    """GE's JSON of a suite result (its ``to_json_dict``), reusing the results serialized before."""
    from great_expectations.core import ExpectationSuiteValidationResult

    shell = ExpectationSuiteValidationResult(success=result.success, results=[], suite_name=result.suite_name,
                                             suite_parameters=result.suite_parameters, statistics=result.statistics,
                                             meta=result.meta, batch_id=result.batch_id, id=result.id)
    document = shell.to_json_dict()
    document["results"] = [documents[id(r)] if id(r) in documents else r.to_json_dict() for r in result.results]
    return json.loads(json.dumps(document, default=str))  # plain JSON values only


def _marked(result, marker: dict):
    from great_expectations.core import ExpectationValidationResult

    return ExpectationValidationResult(success=result.success, expectation_config=result.expectation_config,
                                       result=result.result, meta={**(result.meta or {}), **marker},
                                       exception_info=result.exception_info)


def _combined(suite_name: str, results: list, source, partition: str):
    """One partition's suite result from its expectation results, in suite order; batch metadata
    from the validation of its own rows when there was one."""
    from great_expectations.core import ExpectationSuiteValidationResult
    from great_expectations.validator.validation_statistics import calc_validation_statistics

    stats = calc_validation_statistics(results)
    meta = {**(source.meta or {}), "millrace_partition": partition}
    return ExpectationSuiteValidationResult(
        success=stats.success, results=results, suite_name=suite_name, meta=meta, batch_id=source.batch_id,
        statistics={"evaluated_expectations": stats.evaluated_expectations,
                    "successful_expectations": stats.successful_expectations,
                    "unsuccessful_expectations": stats.unsuccessful_expectations,
                    "success_percent": stats.success_percent})


def _describe(kwargs: dict) -> str:
    keep = {k: v for k, v in kwargs.items() if k in ("column", "column_list", "column_set", "min_value", "max_value")}
    return ", ".join(f"{k}={v}" for k, v in keep.items())
