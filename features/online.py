"""Online reads for the serving tier: many entities and features in one call, returned as Arrow.

Reads go through Feast's online store interface (``online_read``), the same store and key
encoding ``get_online_features`` uses, but skip its per-request registry and response
machinery: the feature views are resolved once, when the reader is made.
"""
from __future__ import annotations

import pyarrow as pa

from millrace.contracts.project import Project
from millrace.features.errors import StoreUnavailable, UnknownFeature
from millrace.features.feast_repo import feature_store
from millrace.features.spec import Features


class OnlineReader:
    def __init__(self, project: Project, features: Features, store=None):
        self.features = features
        self.store = store or feature_store(project)
        self._online = self.store._get_provider().online_store
        self._views: dict = {}

    def _view(self, name: str):
        if name not in self._views:
            self.features.view(name)  # UnknownFeature with the valid names
            fv = self.store.get_feature_view(name)
            self._views[name] = (fv, fv.entity_columns[0].dtype.to_value_type())
        return self._views[name]

    def read(self, view: str, keys, feature_names: list[str] | None = None) -> pa.Table:
        """One row per key, in order: the key, then each feature (null where the store has none)."""
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.type_map import python_values_to_proto_values

        fv, key_type = self._view(view)
        names = feature_names or self.features.feature_names(view)
        unknown = [n for n in names if n not in self.features.types[view]]
        if unknown:
            raise UnknownFeature(f"unknown feature(s) {unknown} in view '{view}' "
                                 f"(fix: use some of {self.features.feature_names(view)})")
        join_key = self.features.join_key(view)
        values = keys.to_pylist() if isinstance(keys, (pa.Array, pa.ChunkedArray)) else list(keys)
        protos = python_values_to_proto_values(values, key_type)
        entity_keys = [EntityKey(join_keys=[join_key], entity_values=[p]) for p in protos]
        try:
            rows = self._online.online_read(self.store.config, fv, entity_keys, list(names))  # Feast's Redis store appends to it
        except Exception as exc:
            if "connect" in f"{type(exc).__name__} {exc}".lower():
                raise StoreUnavailable(f"cannot read the online store: {str(exc).splitlines()[0][:200]}") from None
            raise
        columns = {join_key: pa.array(values, self.features.types[view][join_key])}
        for name in names:
            dtype = self.features.types[view][name]
            columns[name] = pa.array(_column(rows, name, dtype), dtype)
        return pa.table(columns)


_SCALAR = {pa.int64(): "int64_val", pa.int32(): "int32_val", pa.float64(): "double_val", pa.float32(): "float_val",
           pa.string(): "string_val", pa.bool_(): "bool_val"}
_LIST = {pa.int64(): "int64_list_val", pa.int32(): "int32_list_val", pa.float64(): "double_list_val",
         pa.float32(): "float_list_val", pa.string(): "string_list_val", pa.bool_(): "bool_list_val"}


def _column(rows, name: str, dtype: pa.DataType) -> list:
    """One feature's values out of the store's protos, reading the proto field the type implies
    (Feast's generic converter costs more than the store read itself)."""
    is_list = pa.types.is_list(dtype)
    attr = (_LIST if is_list else _SCALAR).get(dtype.value_type if is_list else dtype)
    out = []
    for _, data in rows:
        value = data.get(name) if data else None
        if value is None or value.WhichOneof("val") is None:
            out.append(None)
        elif attr is None:  # timestamps and rarer types: Feast's converter
            from feast.type_map import feast_value_type_to_python_type

            out.append(feast_value_type_to_python_type(value))
        else:
            field = getattr(value, attr)
            out.append(list(field.val) if is_list else field)
    return out
