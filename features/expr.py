"""Row-level expressions: ``arr_delay > 15``, ``distance / (air_time / 60)``, ``hour(dep_time)``,
``coalesce(arr_delay, 0)``, ``concat(origin, '-', dest)``.

An expression is a small language on purpose: Python's expression syntax, parsed with ``ast`` and
accepted only when every node is on the list below, so no text from features.yaml is ever run as
code. It is typed against the source's Arrow schema when features.yaml is loaded (a typo or a
string compared with a number costs one line there, not a failed build) and evaluated with
``pyarrow.compute`` on whole columns: batch builds, training examples and the serving tier run this
one function, so a derived column cannot differ between them.

Semantics are SQL's: null in, null out; ``and``/``or`` are Kleene logic; ``x / 0`` is null.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

from millrace.contracts.arrow import TIMESTAMP

MAX_LENGTH = 500
_INT, _FLOAT, _BOOL, _STR = pa.int64(), pa.float64(), pa.bool_(), pa.string()


class ExpressionError(ValueError):
    """An expression that does not parse, names an unknown column or mixes types. The message is
    one phrase (the caller adds the file and field)."""


@dataclass(frozen=True)
class Expression:
    """A parsed, typed expression over the columns of one schema."""
    text: str
    tree: ast.expr
    type: pa.DataType
    columns: tuple[str, ...]  # the input columns it reads

    def evaluate(self, table: pa.Table) -> pa.Array:
        """The expression's value for every row of ``table`` (which has at least ``columns``)."""
        value = _Evaluator(table).visit(self.tree)
        if isinstance(value, pa.Scalar):  # a constant expression: one value per row
            value = pa.repeat(value, table.num_rows)
        if isinstance(value, pa.ChunkedArray):
            value = value.combine_chunks()
        return value.cast(self.type) if value.type != self.type else value


def parse(text: str, schema: dict[str, pa.DataType]) -> Expression:
    """Parse and type ``text`` against ``schema`` (column -> Arrow type). ExpressionError if it
    cannot be evaluated on such rows."""
    if not isinstance(text, str) or not text.strip():
        raise ExpressionError("is empty (write an expression such as `arr_delay > 15`)")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"is longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as exc:
        raise ExpressionError(f"does not parse ({exc.msg} at column {exc.offset})") from None
    checker = _Typer(schema)
    dtype = checker.visit(tree)
    if dtype == pa.null():
        raise ExpressionError("is always null")
    return Expression(text.strip(), tree, dtype, tuple(sorted(checker.columns)))


def is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


# -- functions: name -> (argument check and result type, evaluation) -------------------------------

def _temporal(name: str, extract: Callable) -> tuple[Callable, Callable]:
    def typ(args):
        if len(args) != 1 or not pa.types.is_timestamp(args[0]):
            raise ExpressionError(f"{name}() takes one timestamp column")
        return _INT
    return typ, lambda a: pc.cast(extract(a[0]), _INT)


def _common(types: list[pa.DataType], what: str) -> pa.DataType:
    known = [t for t in types if t != pa.null()]
    if not known:
        return pa.null()
    if all(is_numeric(t) for t in known):
        return _INT if all(pa.types.is_integer(t) for t in known) else _FLOAT
    if all(t == known[0] for t in known):
        return known[0]
    raise ExpressionError(f"{what} mixes types {[str(t) for t in known]}")


def _coalesce_type(args):
    if len(args) < 2:
        raise ExpressionError("coalesce() takes two or more arguments")
    return _common(args, "coalesce()")


def _if_else_type(args):
    if len(args) != 3 or args[0] not in (_BOOL, pa.null()):
        raise ExpressionError("if_else() takes a condition, a value if true and a value if false")
    return _common(args[1:], "if_else()")


def _concat_type(args):
    if len(args) < 2:
        raise ExpressionError("concat() takes two or more arguments")
    return _STR


def _one_numeric(name: str):
    def typ(args):
        if len(args) != 1 or not is_numeric(args[0]):
            raise ExpressionError(f"{name}() takes one number")
        return args[0]
    return typ


def _text(value):
    return value if value.type == _STR else pc.cast(value, _STR)


_FUNCTIONS: dict[str, tuple[Callable, Callable]] = {
    "hour": _temporal("hour", pc.hour),
    "minute": _temporal("minute", pc.minute),
    "day_of_week": _temporal("day_of_week", pc.day_of_week),  # Monday 0 .. Sunday 6
    "day": _temporal("day", pc.day),
    "month": _temporal("month", pc.month),
    "year": _temporal("year", pc.year),
    "coalesce": (_coalesce_type, lambda a: pc.coalesce(*a)),
    "if_else": (_if_else_type, lambda a: pc.if_else(a[0], a[1], a[2])),
    "is_null": (lambda args: _arity("is_null", args, 1) or _BOOL, lambda a: pc.is_null(a[0])),
    "abs": (_one_numeric("abs"), lambda a: pc.abs(a[0])),
    "concat": (_concat_type, lambda a: pc.binary_join_element_wise(*[_text(v) for v in a], "")),
}
FUNCTIONS = tuple(sorted(_FUNCTIONS))


def _arity(name: str, args: list, n: int) -> None:
    if len(args) != n:
        raise ExpressionError(f"{name}() takes {n} argument{'s' if n > 1 else ''}")


_ARITHMETIC = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Mod: "%"}
_COMPARE = {ast.Eq: pc.equal, ast.NotEq: pc.not_equal, ast.Lt: pc.less, ast.LtE: pc.less_equal,
            ast.Gt: pc.greater, ast.GtE: pc.greater_equal}


class _Typer(ast.NodeVisitor):
    """The result type of each node; anything not handled here is refused."""

    def __init__(self, schema: dict[str, pa.DataType]):
        self.schema, self.columns = schema, set()

    def generic_visit(self, node):
        raise ExpressionError(f"uses `{type(node).__name__}`, which expressions do not allow "
                              f"(use columns, numbers, text, comparisons, + - * / %, and/or/not, "
                              f"and the functions {', '.join(FUNCTIONS)})")

    def visit_Name(self, node: ast.Name):
        if node.id in ("true", "false", "null"):
            return {"true": _BOOL, "false": _BOOL, "null": pa.null()}[node.id]
        if node.id not in self.schema:
            raise ExpressionError(f"names unknown column '{node.id}' (use one of {sorted(self.schema)})")
        self.columns.add(node.id)
        dtype = self.schema[node.id]
        return _STR if pa.types.is_large_string(dtype) else dtype

    def visit_Constant(self, node: ast.Constant):
        value = node.value
        if value is None:
            return pa.null()
        if isinstance(value, bool):
            return _BOOL
        if isinstance(value, int):
            if not -(2**63) <= value < 2**63:
                raise ExpressionError(f"has the integer {value}, which does not fit in 64 bits")
            return _INT
        if isinstance(value, float):
            return _FLOAT
        if isinstance(value, str):
            return _STR
        raise ExpressionError(f"has a constant {value!r} of an unsupported kind")

    def visit_UnaryOp(self, node: ast.UnaryOp):
        operand = self.visit(node.operand)
        if isinstance(node.op, ast.Not):
            return self._need(operand, _BOOL, "not")
        if isinstance(node.op, (ast.USub, ast.UAdd)) and (is_numeric(operand) or operand == pa.null()):
            return operand
        raise ExpressionError(f"applies {type(node.op).__name__} to {operand}")

    def visit_BinOp(self, node: ast.BinOp):
        op = _ARITHMETIC.get(type(node.op))
        left, right = self.visit(node.left), self.visit(node.right)
        if op is None:
            raise ExpressionError(f"uses an operator other than {' '.join(_ARITHMETIC.values())}")
        for side in (left, right):
            if not (is_numeric(side) or side == pa.null()):
                raise ExpressionError(f"applies `{op}` to {side} (arithmetic is for numbers; "
                                      f"concat() joins text)")
        if op == "/":
            return _FLOAT
        return _common([left, right], f"`{op}`") if pa.null() not in (left, right) else _FLOAT

    def visit_BoolOp(self, node: ast.BoolOp):
        for value in node.values:
            self._need(self.visit(value), _BOOL, "and/or")
        return _BOOL

    def visit_Compare(self, node: ast.Compare):
        sides = [self.visit(node.left)] + [self.visit(c) for c in node.comparators]
        for op in node.ops:
            if type(op) not in _COMPARE:
                raise ExpressionError("compares with an operator other than == != < <= > >=")
        known = [s for s in sides if s != pa.null()]
        comparable = (all(is_numeric(s) for s in known) or all(s == known[0] for s in known))
        if not comparable:
            raise ExpressionError(f"compares {' with '.join(str(s) for s in known)}")
        return _BOOL

    def visit_Call(self, node: ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS or node.keywords:
            name = node.func.id if isinstance(node.func, ast.Name) else "?"
            raise ExpressionError(f"calls unknown function '{name}' (use one of {', '.join(FUNCTIONS)})")
        return _FUNCTIONS[node.func.id][0]([self.visit(a) for a in node.args])

    @staticmethod
    def _need(actual: pa.DataType, wanted: pa.DataType, what: str) -> pa.DataType:
        if actual not in (wanted, pa.null()):
            raise ExpressionError(f"applies {what} to {actual}, not a condition (write e.g. `x > 0`)")
        return wanted


class _Evaluator(ast.NodeVisitor):
    """Evaluates a tree the typer accepted: arrays for columns, scalars for constants."""

    def __init__(self, table: pa.Table):
        self.table = table

    def visit_Name(self, node: ast.Name):
        if node.id in ("true", "false", "null"):
            return {"true": pa.scalar(True), "false": pa.scalar(False), "null": pa.scalar(None)}[node.id]
        column = self.table.column(node.id)
        return column.cast(_STR) if pa.types.is_large_string(column.type) else column

    def visit_Constant(self, node: ast.Constant):
        return pa.scalar(node.value)

    def visit_UnaryOp(self, node: ast.UnaryOp):
        value = self.visit(node.operand)
        if isinstance(node.op, ast.Not):
            return pc.invert(value)
        return pc.negate(value) if isinstance(node.op, ast.USub) else value

    def visit_BinOp(self, node: ast.BinOp):
        left, right = _aligned(self.visit(node.left), self.visit(node.right))
        op = type(node.op)
        if op is ast.Div or pa.types.is_floating(left.type) or pa.types.is_floating(right.type):
            left, right = pc.cast(left, _FLOAT), pc.cast(right, _FLOAT)
        if op is ast.Add:
            return pc.add_checked(left, right)
        if op is ast.Sub:
            return pc.subtract_checked(left, right)
        if op is ast.Mult:
            return pc.multiply_checked(left, right)
        zero = pc.equal(right, pa.scalar(0, right.type))  # x / 0 and x % 0: unknown, as SQL
        safe = pc.if_else(zero, pa.scalar(1, right.type), right)
        if op is ast.Div:
            value = pc.divide(left, safe)
        else:  # the sign of the divisor, as Python's % and DuckDB's floor modulo
            quotient = pc.floor(pc.divide(pc.cast(left, _FLOAT), pc.cast(safe, _FLOAT)))
            value = pc.subtract(left, pc.multiply(pc.cast(quotient, left.type), safe))
        return pc.if_else(zero, pa.scalar(None, value.type), value)

    def visit_BoolOp(self, node: ast.BoolOp):
        values = [self.visit(v) for v in node.values]
        combine = pc.and_kleene if isinstance(node.op, ast.And) else pc.or_kleene
        out = values[0]
        for v in values[1:]:
            out = combine(out, v)
        return out

    def visit_Compare(self, node: ast.Compare):
        left, out = self.visit(node.left), None
        for op, comparator in zip(node.ops, node.comparators):
            left, right = _aligned(left, self.visit(comparator))
            if is_numeric(left.type) and is_numeric(right.type) and left.type != right.type:
                left_c, right_c = pc.cast(left, _FLOAT), pc.cast(right, _FLOAT)
            else:
                left_c, right_c = left, right
            result = _COMPARE[type(op)](left_c, right_c)
            out = result if out is None else pc.and_kleene(out, result)
            left = right
        return out

    def visit_Call(self, node: ast.Call):
        return _FUNCTIONS[node.func.id][1]([self.visit(a) for a in node.args])


def _aligned(left, right):
    """A bare ``null`` takes the other side's type (Arrow has no kernels for the null type)."""
    if left.type == pa.null() and right.type != pa.null():
        left = pa.scalar(None, right.type)
    elif right.type == pa.null() and left.type != pa.null():
        right = pa.scalar(None, left.type)
    return left, right


def derive(table: pa.Table, expressions: dict[str, Expression]) -> pa.Table:
    """``table`` with each derived column appended (in order: later ones may read earlier ones)."""
    for name, expression in expressions.items():
        if name in table.column_names:
            table = table.drop_columns([name])
        table = table.append_column(pa.field(name, expression.type), expression.evaluate(table))
    return table


__all__ = ["Expression", "ExpressionError", "FUNCTIONS", "TIMESTAMP", "derive", "parse"]
