"""Row counts a forward pass is padded to, so a long-running server compiles a bounded set of matmul kernels.

On CPU, oneDNN compiles a primitive for every (row count, weight shape) its linear layers meet and keeps up to
1,024 of them per process; distinct conversations bring ever-new token counts, and those primitives alone grew
a server's RSS by about a gigabyte (docs/serving.md). Rounding each forward's rows up to a multiple of 8, and
above 128 rows to one of sixteen sizes per power of two, adds at most 7 rows or 1/16 of a pass and leaves 96
row counts up to 4,096.
"""
from __future__ import annotations

MIN_ROWS = 8  # below this a pass is bound by reading the weights: extra rows cost next to nothing
PER_OCTAVE = 16  # sizes per power of two above 128 rows


def padded(rows: int) -> int:
    """The row count a forward over `rows` tokens computes: the next multiple of max(8, 2**(bits - 5))."""
    if rows < 1:
        raise ValueError(f"rows: {rows} is not a positive count")
    step = max(MIN_ROWS, 1 << max(0, rows.bit_length() - PER_OCTAVE.bit_length()))
    return -(-rows // step) * step
