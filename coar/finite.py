"""Finding NaN and infinity in result arrays, named by row and column, so a step can refuse them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SHOWN = 5  # names quoted per axis in a message


def nonfinite_problem(values: np.ndarray, rows: Sequence[object], columns: Sequence[object],
                      row_kind: str, column_kind: str) -> str | None:
    """None if every value is finite; else a sentence naming how many are not and where.

    `values` is 2-D; `rows` and `columns` name its rows and columns (e.g. mask numbers and
    example ids).
    """
    bad = ~np.isfinite(np.asarray(values))
    if not bad.any():
        return None
    bad_rows, bad_columns = np.flatnonzero(bad.any(1)), np.flatnonzero(bad.any(0))
    return (f"{int(bad.sum())} non-finite values (NaN or infinity) in {len(bad_rows)} {row_kind} "
            f"{_names(rows, bad_rows)} and {len(bad_columns)} {column_kind} {_names(columns, bad_columns)}")


def _names(names: Sequence[object], where: np.ndarray) -> str:
    shown = ", ".join(str(names[i]) for i in where[:SHOWN])
    return f"[{shown}{', ...' if len(where) > SHOWN else ''}]"
