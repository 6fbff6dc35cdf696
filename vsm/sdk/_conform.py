"""Rows of one event schema read in another, fields matched by name at every level.

A home keeps what earlier releases wrote in their event schema: journal frames not delivered
yet, a DuckDB sink's tables, a Parquet sink's files. When the schema changes (fe4bd3b removed
`pre.deals`), old and new rows meet: in one delivery (a sink behind at the upgrade gets old
frames and new ones together), in one table, in one dataset. They are brought to one schema
by name, so nothing stored is dropped and no reader meets two schemas:

    union_schema([old, new])     every field of either, at every level (old order first)
    fields_beyond(old, new)      ["pre.deals"]: what `old` holds that `new` has no field for
    shaped_like(new, stored)     the stored names and order, the new types where they exist
    cast_by_name(rows, schema)   rows in `schema`: a field the rows lack is null; a field
                                 `schema` lacks is left out; only changed columns are rebuilt

Structs and lists are rebuilt from their children (no pyarrow cast of a struct: struct casts
by name that add or drop fields came in later pyarrow releases than the 15 vsm-pool allows),
leaves are cast only when their types differ. Rows already in the schema are returned as they
are (a schema comparison, ~0.2 us).
"""

from __future__ import annotations

from typing import Sequence, TypeVar

import pyarrow as pa

__all__ = ["cast_by_name", "fields_beyond", "shaped_like", "union_schema"]

Rows = TypeVar("Rows", pa.RecordBatch, pa.Table)


def _is_list(t: pa.DataType) -> bool:
    return bool(pa.types.is_list(t) or pa.types.is_large_list(t))


def _union_type(a: pa.DataType, b: pa.DataType) -> pa.DataType:
    if a == b:
        return a
    if pa.types.is_struct(a) and pa.types.is_struct(b):
        return pa.struct(_union_fields(list(a), list(b)))
    if _is_list(a) and _is_list(b):
        f = _union_field(a.value_field, b.value_field)
        return pa.large_list(f) if pa.types.is_large_list(a) else pa.list_(f)
    return a  # a leaf whose type changed: the first one's, the other is cast to it


def _union_field(a: pa.Field, b: pa.Field) -> pa.Field:
    return pa.field(a.name, _union_type(a.type, b.type), a.nullable or b.nullable, a.metadata)


def _union_fields(a: list[pa.Field], b: list[pa.Field]) -> list[pa.Field]:
    theirs = {f.name: f for f in b}
    out = [_union_field(f, theirs[f.name]) if f.name in theirs else f for f in a]
    mine = {f.name for f in a}
    return out + [f.with_nullable(True) for f in b if f.name not in mine]


def union_schema(schemas: Sequence[pa.Schema]) -> pa.Schema:
    """Every field of every schema, matched by name at every level: the first schema's fields
    in its order, then the ones only later schemas have (nullable: the others lack them)."""
    fields = list(schemas[0])
    for s in schemas[1:]:
        fields = _union_fields(fields, list(s))
    return pa.schema(fields, metadata=schemas[0].metadata)


def _beyond(t: pa.DataType, base: pa.DataType, path: str) -> list[str]:
    if pa.types.is_struct(t) and pa.types.is_struct(base):
        return _beyond_fields(list(t), list(base), path + ".")
    if _is_list(t) and _is_list(base):
        return _beyond(t.value_type, base.value_type, path + "[]")
    return []


def _beyond_fields(fields: list[pa.Field], base: list[pa.Field], prefix: str) -> list[str]:
    theirs = {f.name: f for f in base}
    out: list[str] = []
    for f in fields:
        out += [prefix + f.name] if f.name not in theirs else _beyond(f.type, theirs[f.name].type, prefix + f.name)
    return out


def fields_beyond(schema: pa.Schema, base: pa.Schema) -> list[str]:
    """The fields `schema` has and `base` lacks, as dotted paths ("pre.deals"; "[]" steps into a
    list's items): what rows of `base` cannot carry."""
    return _beyond_fields(list(schema), list(base), "")


def _shaped_type(t: pa.DataType, like: pa.DataType) -> pa.DataType:
    if pa.types.is_struct(t) and pa.types.is_struct(like):
        return pa.struct(_shaped_fields(list(t), list(like)))
    if _is_list(t) and _is_list(like):
        item = t.value_field  # its own name ("item"; Parquet's "element"): only the shape is like's
        f = pa.field(item.name, _shaped_type(item.type, like.value_type), item.nullable, item.metadata)
        return pa.large_list(f) if pa.types.is_large_list(t) else pa.list_(f)
    return t


def _shaped_field(f: pa.Field, like: pa.Field) -> pa.Field:
    return pa.field(like.name, _shaped_type(f.type, like.type), f.nullable, f.metadata)


def _shaped_fields(fields: list[pa.Field], like: list[pa.Field]) -> list[pa.Field]:
    have = {f.name: f for f in fields}
    return [_shaped_field(have[g.name], g) if g.name in have else g for g in like]


def shaped_like(schema: pa.Schema, like: pa.Schema) -> pa.Schema:
    """`like`'s field names and order at every level, with `schema`'s types wherever `schema`
    has the field (a stored table's shape for rows of `schema`, without casting their leaves
    to the types the store reports, e.g. DuckDB's BLOB for a fixed-size binary)."""
    return pa.schema(_shaped_fields(list(schema), list(like)), metadata=schema.metadata)


def _cast_array(arr: pa.Array, t: pa.DataType) -> pa.Array:
    if arr.type == t:
        return arr
    mask = arr.is_null() if arr.null_count else None
    if pa.types.is_struct(t) and pa.types.is_struct(arr.type):
        index = {arr.type.field(i).name: i for i in range(arr.type.num_fields)}
        children = [
            _cast_array(arr.field(index[f.name]), f.type) if f.name in index else pa.nulls(len(arr), f.type)
            for f in t
        ]
        return pa.StructArray.from_arrays(children, fields=list(t), mask=mask)
    if _is_list(t) and _is_list(arr.type):
        # .offsets index .values (the whole child, whatever the slice): rebase them on the
        # slice's first value (from_arrays takes no sliced offsets beside a null mask)
        offsets = arr.offsets.to_numpy()
        first, last = int(offsets[0]), int(offsets[-1])
        values = _cast_array(arr.values.slice(first, last - first), t.value_type)
        cls = pa.LargeListArray if pa.types.is_large_list(t) else pa.ListArray
        rebased = pa.array(offsets - first, pa.int64() if cls is pa.LargeListArray else pa.int32())
        return cls.from_arrays(rebased, values, type=t, mask=mask)
    return arr.cast(t)


def _cast_column(col: pa.Array | pa.ChunkedArray, t: pa.DataType) -> pa.Array | pa.ChunkedArray:
    if col.type == t:
        return col
    if isinstance(col, pa.ChunkedArray):
        return pa.chunked_array([_cast_array(c, t) for c in col.chunks], t)
    return _cast_array(col, t)


def cast_by_name(rows: Rows, schema: pa.Schema) -> Rows:
    """`rows` (a RecordBatch or a Table) in `schema`, fields matched by name at every level: a
    field that `rows` lack is null, a field that `schema` lacks is left out (pass a
    union_schema to keep it); columns whose type is already right are taken as they are."""
    if rows.schema.equals(schema):
        return rows
    names = set(rows.schema.names)
    n = rows.num_rows
    is_table = isinstance(rows, pa.Table)
    cols = []
    for f in schema:
        if f.name in names:
            cols.append(_cast_column(rows.column(f.name), f.type))
        else:
            cols.append(pa.chunked_array([pa.nulls(n, f.type)], f.type) if is_table else pa.nulls(n, f.type))
    if is_table:
        return pa.Table.from_arrays(cols, schema=schema)
    return pa.RecordBatch.from_arrays(cols, schema=schema)
