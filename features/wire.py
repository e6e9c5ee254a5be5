"""Feast 0.67's online-store encoding, readable without ``import feast`` (~11 s, ~370 MB).

What Feast writes, and what the serving tier must read back byte for byte:

- entity keys: ``serialize_entity_key`` version 3 (``feast/infra/key_encoding_utils.py``):
  ``<I n keys>``, per key ``<I 2 (STRING)> <I len> utf-8 name``, per value ``<I value type>
  <I len> bytes`` (int64 ``<q``, int32 ``<i``, string utf-8); the keys of a composite entity
  sorted by name (Python's string order), their values in the same order;
- values: the ``feast.types.Value`` protobuf message, serialized;
- Redis: one hash per entity at ``entity key bytes + project name``; a feature's field is the
  murmur3 (x86, 32 bit, seed 0, little endian) of ``"<view>:<feature>"``; ``_ts:<view>`` holds a
  ``google.protobuf.Timestamp`` of the row's event time.

Importing ``feast.protos`` runs ``feast/__init__.py``, so the Value message is declared here under
our own protobuf package (``millrace.feastwire``, in a private descriptor pool) with Feast's field
numbers: the bytes on the wire are the same. tests/features/test_online_wire.py checks every field
number against Feast's descriptor and every encoding against Feast's own functions.
"""
from __future__ import annotations

import datetime as dt
import struct
from functools import lru_cache

STRING, INT32, INT64 = 2, 3, 4  # feast.types.ValueType.Enum
NULL_TIMESTAMP = -9223372036854775808  # numpy NaT as int: Feast's null timestamp
UTC = dt.timezone.utc

# oneof `val` of feast.types.Value: (field name, number, scalar type or list message)
_SCALARS = (("bytes_val", 1, "bytes"), ("string_val", 2, "string"), ("int32_val", 3, "int32"),
            ("int64_val", 4, "int64"), ("double_val", 5, "double"), ("float_val", 6, "float"),
            ("bool_val", 7, "bool"), ("unix_timestamp_val", 8, "int64"))
_LISTS = (("bytes_list_val", 11, "BytesList", "bytes"), ("string_list_val", 12, "StringList", "string"),
          ("int32_list_val", 13, "Int32List", "int32"), ("int64_list_val", 14, "Int64List", "int64"),
          ("double_list_val", 15, "DoubleList", "double"), ("float_list_val", 16, "FloatList", "float"),
          ("bool_list_val", 17, "BoolList", "bool"), ("unix_timestamp_list_val", 18, "Int64List", "int64"))
NULL_FIELD = ("null_val", 19)  # enum feast.types.Null { NULL = 0; }
FIELD_NUMBERS = {name: number for name, number, *_ in _SCALARS + _LISTS} | {NULL_FIELD[0]: NULL_FIELD[1]}


@lru_cache(maxsize=1)
def value_class():
    """The message class, built once from a descriptor (no generated code, no protoc)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    kinds = {"bytes": F.TYPE_BYTES, "string": F.TYPE_STRING, "int32": F.TYPE_INT32, "int64": F.TYPE_INT64,
             "double": F.TYPE_DOUBLE, "float": F.TYPE_FLOAT, "bool": F.TYPE_BOOL}
    pkg = "millrace.feastwire"
    fd = descriptor_pb2.FileDescriptorProto(name="millrace/feastwire/value.proto", package=pkg, syntax="proto3")
    null = fd.enum_type.add(name="Null")
    null.value.add(name="NULL", number=0)
    for message in sorted({m[2] for m in _LISTS}):
        kind = next(k for _, _, m, k in _LISTS if m == message)
        fd.message_type.add(name=message).field.add(name="val", number=1, label=F.LABEL_REPEATED, type=kinds[kind])
    value = fd.message_type.add(name="Value")
    value.oneof_decl.add(name="val")
    for name, number, kind in _SCALARS:
        value.field.add(name=name, number=number, label=F.LABEL_OPTIONAL, type=kinds[kind], oneof_index=0)
    for name, number, message, _ in _LISTS:
        value.field.add(name=name, number=number, label=F.LABEL_OPTIONAL, type=F.TYPE_MESSAGE,
                        type_name=f".{pkg}.{message}", oneof_index=0)
    value.field.add(name=NULL_FIELD[0], number=NULL_FIELD[1], label=F.LABEL_OPTIONAL, type=F.TYPE_ENUM,
                    type_name=f".{pkg}.Null", oneof_index=0)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{pkg}.Value"))


def decode_value(data: bytes | None):
    """A stored value as Python, as Feast's ``feast_value_type_to_python_type`` returns it.

    Raises ValueError for bytes that hold none of the types above (a newer Feast type): never
    a silent None."""
    if not data:
        return None
    msg = value_class().FromString(data)
    which = msg.WhichOneof("val")
    if which is None:
        raise ValueError("a value of a type this reader does not know")
    if which == "null_val":
        return None
    raw = getattr(msg, which)
    if which == "unix_timestamp_val":
        return _timestamp(raw)
    if which.endswith("_list_val"):
        values = list(raw.val)
        return [_timestamp(v) for v in values] if which == "unix_timestamp_list_val" else values
    return raw


def _timestamp(seconds: int) -> dt.datetime | None:
    return None if seconds == NULL_TIMESTAMP else dt.datetime.fromtimestamp(seconds, tz=UTC)


def entity_key(join_key: str | list[str], value, value_type: int | list[int]) -> bytes:
    """``serialize_entity_key`` (version 3) of an entity: one key (a name, a value, a type) or a
    composite one (lists of names, values and types, in any order: Feast sorts them by name)."""
    if isinstance(join_key, str):
        join_key, value, value_type = [join_key], [value], [value_type]
    if not (len(join_key) == len(value) == len(value_type)) or len(set(join_key)) != len(join_key):
        raise ValueError(f"entity key fields {join_key}: need one value and type per field, no field twice")
    parts = sorted(zip(join_key, value, value_type), key=lambda part: part[0])
    names = [name.encode("utf-8") for name, _, _ in parts]
    out = [struct.pack("<I", len(parts))]
    out += [struct.pack("<II", STRING, len(name)) + name for name in names]
    for _, v, kind in parts:
        data = key_bytes(v, kind)
        out.append(struct.pack("<II", kind, len(data)) + data)
    return b"".join(out)


def key_bytes(value: int | str, value_type: int) -> bytes:
    """One entity key value as ``serialize_entity_key`` writes it (after its type and length)."""
    if value_type == STRING:
        return str(value).encode("utf-8")
    if value_type == INT64:
        return struct.pack("<q", int(value))
    if value_type == INT32:
        return struct.pack("<i", int(value))
    raise ValueError(f"entity key type {value_type} is not int64, int32 or string")


def redis_field(view: str, feature: str) -> bytes:
    """The Redis hash field of a feature (Feast's ``_mmh3``)."""
    return murmur3_32(f"{view}:{feature}".encode("utf-8")).to_bytes(4, "little")


def murmur3_32(data: bytes, seed: int = 0) -> int:
    """MurmurHash3 x86 32-bit, unsigned (as ``mmh3.hash(data, signed=False)``)."""
    c1, c2, mask = 0xCC9E2D51, 0x1B873593, 0xFFFFFFFF
    h = seed & mask
    blocks = len(data) // 4
    for (k,) in struct.iter_unpack("<I", data[:blocks * 4]):
        k = (k * c1) & mask
        k = ((k << 15) | (k >> 17)) & mask
        h ^= (k * c2) & mask
        h = ((h << 13) | (h >> 19)) & mask
        h = (h * 5 + 0xE6546B64) & mask
    tail, k = data[blocks * 4:], 0
    for i, byte in enumerate(tail):
        k |= byte << (8 * i)
    if tail:
        k = (k * c1) & mask
        k = ((k << 15) | (k >> 17)) & mask
        h ^= (k * c2) & mask
    h ^= len(data)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & mask
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & mask
    return h ^ (h >> 16)
