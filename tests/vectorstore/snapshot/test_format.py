"""Vectors through Arrow: binary ``vector`` values to Arrow arrays and back to rows, of any dimensions."""

from __future__ import annotations

import struct

import numpy as np
import pyarrow as pa
import pytest

from vectorstore.snapshot import Column, from_arrow, to_arrow, vector_lists_from_binary


@pytest.mark.parametrize("dims", [[3, 5, 3], [4, None, 2, None], [None], [7, 7], [0, 2]])
def test_vectors_of_any_dimensions_round_trip_through_arrow(dims: list[int | None]) -> None:
    rng = np.random.default_rng(3)
    vectors = [None if d is None else rng.standard_normal(d).astype(np.float32) for d in dims]
    binary = [None if v is None else struct.pack(">HH", len(v), 0) + v.astype(">f4").tobytes() for v in vectors]
    array = vector_lists_from_binary(binary)
    assert array.type == pa.list_(pa.float32())
    assert array.to_pylist() == [None if v is None else v.tolist() for v in vectors]
    for column in [
        Column("embedding", "vector"),
        *([Column("embedding", "vector", dims[0])] if len(set(dims)) == 1 else []),
    ]:
        (stored,) = to_arrow([column], [(b,) for b in binary])
        back = [row[0] for row in from_arrow([column], pa.record_batch([stored], names=["embedding"]))]
        assert [None if v is None else v.tolist() for v in back] == [None if v is None else v.tolist() for v in vectors]
