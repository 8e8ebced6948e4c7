"""`fdhclean.arrow`: buffer-built arrays equal pyarrow's own; refine never imports pandas."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fdhclean.arrow import column, numeric, to_numpy, to_strings
from fdhclean.refine.report import REPORT_SCHEMA, rows_to_table

ROWS = [
    {"s": "ab", "b": True, "i": 3, "f": 0.5, "l": [1.0, 2.0]},
    {"s": None, "b": False, "i": None, "f": None, "l": None},
    {"s": "", "b": None, "i": -(2**40), "f": float("nan"), "l": []},
    {"s": "é\x00z", "b": True, "i": 7, "f": -1e300, "l": np.arange(3.0)},
]


def parquet_bytes(table: pa.Table) -> bytes:
    """What the report writer stores (NaN compares unequal in `Array.equals`; bytes do not)."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


TYPES = {
    "s": pa.string(),
    "b": pa.bool_(),
    "i": pa.int64(),
    "f": pa.float64(),
    "l": pa.list_(pa.float64()),
}


@pytest.mark.parametrize("n", [0, 1, 4, 9, 64])
@pytest.mark.parametrize("name", list(TYPES))
def test_column_equals_pyarrow(name, n):
    """Every value pattern (nulls included, lengths across bitmap byte boundaries)."""
    values = [ROWS[i % len(ROWS)][name] for i in range(n)]
    expected_values = [None if v is None else list(v) if name == "l" else v for v in values]
    expected = pa.array(expected_values, type=TYPES[name])
    got = column(values, TYPES[name])
    got.validate(full=True)
    assert got.type == expected.type and got.null_count == expected.null_count
    table = pa.Table.from_arrays
    assert parquet_bytes(table([got], ["c"])) == parquet_bytes(table([expected], ["c"]))


def test_report_table_equals_pyarrow_conversion():
    rows = []
    for i, template in enumerate(ROWS * 3):
        row = {f.name: None for f in REPORT_SCHEMA}
        row.update(key=template["s"], index=i if template["i"] is not None else None)
        row.update(updated=bool(template["b"]), orig_frac=template["f"], box=[1, 2, 3, 4])
        row.update(orig_keypoints=template["l"], orig_correct=template["i"])
        rows.append(row)
    got = rows_to_table(rows)
    plain = {
        f.name: [list(r[f.name]) if isinstance(r[f.name], np.ndarray) else r[f.name] for r in rows]
        for f in REPORT_SCHEMA
    }
    assert parquet_bytes(got) == parquet_bytes(pa.Table.from_pydict(plain, schema=REPORT_SCHEMA))


def test_to_numpy_and_strings_read_slices_and_chunks():
    ints = numeric(np.arange(10), pa.int64())
    chunked = pa.chunked_array([ints.slice(2, 3), ints.slice(7)])
    assert to_numpy(chunked).tolist() == [2, 3, 4, 7, 8, 9]
    assert to_numpy(ints.slice(4, 2)).tolist() == [4, 5]
    flat = numeric(np.arange(12, dtype=np.float32), pa.float32())
    lists = pa.FixedSizeListArray.from_arrays(flat, 3).slice(1, 2)
    assert to_numpy(lists).tolist() == [[3, 4, 5], [6, 7, 8]]
    texts = pa.array(["a", None, "bc", "", "d"] * 3)
    assert to_strings(pa.chunked_array([texts.slice(1, 7), texts.slice(9)])) == (
        texts.to_pylist()[1:8] + texts.to_pylist()[9:]
    )
    assert not to_numpy(lists).flags.writeable  # (may share a cached row group's memory)
    assert not to_numpy(chunked).flags.writeable
    assert to_numpy(pa.chunked_array([], type=lists.type)).shape == (0, 3)
    with pytest.raises(ValueError, match="nulls"):
        to_numpy(pa.array([1, None], type=pa.int64()))


def test_refine_with_a_prediction_store_never_imports_pandas(synth_root, tmp_path):
    """pandas' import is 0.32-0.36 CPU-s per refine process (main, workers, ranks): the
    report writer, store reads and finalize go through `fdhclean.arrow` instead."""
    code = (
        "import sys\n"
        "from fdhclean.cli import main\n"
        f"args = ['refine', '--split', 'val', '--data-root', {str(synth_root)!r}, "
        f"'--out', {str(tmp_path / 'out')!r}, '--part-table', {str(synth_root / 'parts.npz')!r},"
        f" '--predictions', {str(synth_root / 'predictions_val.json')!r}]\n"
        "assert main(args) == 0\n"
        "print('pandas' in sys.modules)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "False"
