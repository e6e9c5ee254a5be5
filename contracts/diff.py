"""Compare two versions of a contract: which changes break consumers, and is the version bump enough."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from millrace.contracts.model import Contract, Field
from millrace.contracts.records import Record


@dataclass(frozen=True)
class Change:
    where: str
    what: str
    breaking: bool


@dataclass(frozen=True)
class DiffReport:
    old: Contract
    new: Contract
    changes: tuple[Change, ...]

    @property
    def breaking(self) -> list[Change]:
        return [c for c in self.changes if c.breaking]

    @property
    def major_bumped(self) -> bool:
        return self.new.major_version > self.old.major_version

    @property
    def fails(self) -> bool:
        return bool(self.breaking) and not self.major_bumped

    @property
    def verdict(self) -> str:
        v = f"{self.old.version} -> {self.new.version}"
        if not self.breaking:
            return f"ok: {len(self.changes)} compatible change(s) ({v})"
        if self.major_bumped:
            return f"ok: {len(self.breaking)} breaking change(s) with a major version bump ({v})"
        return (f"FAIL: {len(self.breaking)} breaking change(s) without a major version bump ({v}); "
                f"bump the major version to {self.old.major_version + 1}.0.0 or make the change compatible")


    def record(self) -> "DiffRecord":
        """The report as a typed record, for CI and other readers (``millrace contracts diff --json``)."""
        return DiffRecord(
            old=ContractRef(id=self.old.id, version=self.old.version),
            new=ContractRef(id=self.new.id, version=self.new.version),
            changes=tuple(ChangeRecord(where=c.where, what=c.what, breaking=c.breaking) for c in self.changes),
            breaking=len(self.breaking), major_bumped=self.major_bumped, fails=self.fails, verdict=self.verdict)


class ContractRef(Record):
    id: str
    version: str


class ChangeRecord(Record):
    where: str
    what: str
    breaking: bool


class DiffRecord(Record):
    """A contract comparison as JSON: every change, and whether the version bump covers them."""

    format_version: Literal[1] = 1
    old: ContractRef
    new: ContractRef
    changes: tuple[ChangeRecord, ...]
    breaking: int               # how many of the changes break consumers
    major_bumped: bool
    fails: bool                 # breaking changes without a major version bump
    verdict: str


def diff_contracts(old: Contract, new: Contract) -> DiffReport:
    changes: list[Change] = []
    add = lambda where, what, breaking: changes.append(Change(where, what, breaking))  # noqa: E731
    if old.id != new.id:
        add("id", f"{old.id} -> {new.id}", True)
    if old.key_fields != new.key_fields:
        add("primary key", f"{list(old.key_fields)} -> {list(new.key_fields)}", True)
    if old.event_time != new.event_time:
        add("eventTime", f"{old.event_time} -> {new.event_time}", True)
    if old.partitioning != new.partitioning:
        add("partitioning", f"{_part(old)} -> {_part(new)}", True)
    if old.quarantine_threshold != new.quarantine_threshold:
        add("quarantineThreshold", f"{old.quarantine_threshold} -> {new.quarantine_threshold}", False)
    old_fields = {f.name: f for f in old.fields}
    new_fields = {f.name: f for f in new.fields}
    for name in old_fields:
        if name not in new_fields:
            add(f"field {name}", "removed", True)
    for name, f in new_fields.items():
        if name not in old_fields:
            add(f"field {name}", f"added ({'required' if f.required else 'optional'})", f.required)
            continue
        _field_changes(old_fields[name], f, add)
    if old.table_checks != new.table_checks:
        add("quality", "dataset-level quality rules changed", False)
    return DiffReport(old, new, tuple(changes))


def _part(c: Contract) -> str:
    p = c.partitioning
    return f"{p.key} by {p.granularity} of {p.field or 'landing date'}"


def _field_changes(a: Field, b: Field, add) -> None:
    where = f"field {a.name}"
    # The compiled types, not their spelling: a landing encoding moved from physicalType to
    # landingEncoding, or physicalType int64 written bigint, is no change.
    if (a.logical_type, a.encoding) != (b.logical_type, b.encoding):
        add(where, f"type {_type(a)} -> {_type(b)}", True)
    if a.required != b.required:
        add(where, "optional -> required" if b.required else "required -> optional", b.required)
    _bound(where, "minimum", a.minimum, b.minimum, lower=True, add=add)
    _bound(where, "exclusiveMinimum", a.exclusive_minimum, b.exclusive_minimum, lower=True, add=add)
    _bound(where, "maximum", a.maximum, b.maximum, lower=False, add=add)
    _bound(where, "exclusiveMaximum", a.exclusive_maximum, b.exclusive_maximum, lower=False, add=add)
    _bound(where, "minLength", a.min_length, b.min_length, lower=True, add=add)
    _bound(where, "maxLength", a.max_length, b.max_length, lower=False, add=add)
    if a.enum != b.enum:
        if not a.enum:
            add(where, f"enum added {list(b.enum)}", True)
        elif not b.enum:
            add(where, "enum removed (any value allowed)", False)
        else:
            removed = [v for v in a.enum if v not in b.enum]
            added = [v for v in b.enum if v not in a.enum]
            if removed:
                add(where, f"enum values removed {removed}", True)
            if added:
                add(where, f"enum values added {added}", False)
    if a.pattern != b.pattern:
        if b.pattern is None:
            add(where, "pattern removed", False)
        else:
            add(where, f"pattern {a.pattern!r} -> {b.pattern!r} (cannot prove it accepts every old value)", True)
    if a.description != b.description:
        add(where, "description changed", False)


def _type(f: Field) -> str:
    return f"{f.logical_type} ({f.encoding})" if f.encoding else f.logical_type


def _bound(where: str, name: str, old, new, lower: bool, add) -> None:
    if old == new:
        return
    if new is None:
        add(where, f"{name} {old} removed (widened)", False)
    elif old is None:
        add(where, f"{name} {new} added (tightened)", True)
    else:
        tighter = new > old if lower else new < old
        add(where, f"{name} {old} -> {new} ({'tightened' if tighter else 'widened'})", tighter)
