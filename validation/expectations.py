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


@dataclass(frozen=True)
class SuiteResult:
    """One partition's verdict: the typed report that is written beside it, and GE's result object
    (not serialisable) for rendering Data Docs."""

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

    suite = gx.ExpectationSuite(name=f"{contract.name}-{contract.version}")
    add = suite.add_expectation
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
    return suite


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
        self._view = self._renderer = None

    def validate(self, table: pa.Table) -> SuiteResult:
        frame = table.select(list(self.contract.field_names)).to_pandas(types_mapper=None)
        batch = self.batch_definition.get_batch(batch_parameters={"dataframe": frame})
        result = batch.validate(self.suite, result_format="SUMMARY")
        blocking, warnings = [], []
        for r in result.results:
            if r.success:
                continue
            cfg = r.expectation_config
            label = f"{cfg.type}({_describe(cfg.kwargs)})"
            severity = str(getattr(cfg, "severity", "critical")).lower()
            (warnings if severity.endswith(("warning", "info")) else blocking).append(label)
        document = json.loads(json.dumps(result.to_json_dict(), default=str))  # plain JSON values only
        report = ExpectationsReport(suite=self.suite.name, success=not blocking, evaluated=len(result.results),
                                    failed_blocking=tuple(blocking), failed_warnings=tuple(warnings),
                                    great_expectations=document)
        return SuiteResult(report=report, validation=result)

    def render_html(self, suite_result: SuiteResult) -> str:
        from great_expectations.render.renderer import ValidationResultsPageRenderer
        from great_expectations.render.view import DefaultJinjaPageView

        if self._view is None:  # one view: its Jinja environment caches the compiled templates
            self._view, self._renderer = DefaultJinjaPageView(), ValidationResultsPageRenderer()
        return self._view.render(self._renderer.render(suite_result.validation))


def _describe(kwargs: dict) -> str:
    keep = {k: v for k, v in kwargs.items() if k in ("column", "column_list", "column_set", "min_value", "max_value")}
    return ", ".join(f"{k}={v}" for k, v in keep.items())
