"""The index's typed accessors (featcache/cache/index.py): ``Table`` reads and writes the same bytes
as the structured array's fields, ``IndexEntry`` is the JSON line as written."""
import json

import numpy as np
import pytest

from featcache.cache import index, schema


def _row(arrays=index.ARRAYS):
    record = {"video_id": "v1", "split": "val", "labels": ["a"], "status": "done", "policies": {"uniform:2": [0, 3]}}
    placed = {schema.TOKENS: [5, 2], schema.CUT: [9, 2]}
    crc = {schema.TOKENS: 0xDEADBEEF, schema.CUT: 7}
    line, _, _, _, row = index.encode(record, placed, 3, crc, ["uniform:2"], index.table_dtype(arrays))
    index.place(row, {"index": 10, "ids": 20, "labels": 30, "positions": 40})
    return record, placed, line, row


@pytest.mark.parametrize("arrays", [index.ARRAYS, index.VIEW_ARRAYS], ids=["156", "180"])
def test_table_columns_are_the_structured_fields(arrays):
    record, placed, line, row = _row(arrays)
    t = index.Table(row)
    assert row.dtype.itemsize == (156 if arrays == index.ARRAYS else 180) and t.arrays == arrays
    assert index.arrays_of(row) == arrays
    # the fields read by name from numpy, independently of the properties
    for prop, field in [("hash", "hash"), ("line", "line"), ("line_len", "line_len"), ("generation", "generation"),
                        ("status", "status"), ("split", "split"), ("starts", "start"), ("counts", "count"),
                        ("crcs", "crc"), ("positions", "positions"), ("row_check", "row_check")]:
        np.testing.assert_array_equal(getattr(t, prop), row[field])
    i = arrays.index(schema.CUT)
    assert int(t.start(schema.CUT)[0]) == 9 == int(row["start"][0, i]) and int(t.count(schema.TOKENS)[0]) == 2
    assert int(t.crc(schema.TOKENS)[0]) == 0xDEADBEEF and int(t.offset("ids")[0]) == 20 and t.positions[0] == 10
    assert int(t.length("index")[0]) == len(line) and t.split[0] == index.SPLIT_CODES.index("val")
    one = index.Table(row[0])  # a single row (np.void) reads the same
    assert one.starts.tolist() == row["start"][0].tolist() and int(one.generation) == 3
    assert index.rows_intact(row).all()
    t.generation = 4  # a write goes to the rows: the check no longer matches
    assert row["generation"][0] == 4 and not index.rows_intact(row).any()


def test_index_entry_is_the_json_line():
    record, placed, line, _ = _row()
    entry = index.IndexEntry.from_json(json.loads(line))
    assert entry.record == record and entry.rows == placed and entry.generation == 3 and entry.segment is None
    assert entry.crc == {schema.TOKENS: "deadbeef", schema.CUT: "00000007"}
    assert entry.video_id == "v1" and entry.status == "done" and entry.split == "val"
    for bad in ([1], 5, {"rows": {}}):
        with pytest.raises((TypeError, KeyError)):
            index.IndexEntry.from_json(bad)
    with pytest.raises(KeyError):
        index.IndexEntry.from_json({"record": {}}).video_id  # noqa: B018
