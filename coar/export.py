"""Attributions as files other tools read: CSV, Parquet or NumPy's npz (`coar export`).

CSV and Parquet hold the wide table (one row per example: its id, bias, then one column per
component name, "module[unit]"); npz holds the arrays and the component table:
weight, bias, example_ids, component_names, modules, units, kinds, layers, and `info`, how the
attributions were made (the result's `info` as a JSON string: encoding, method, alpha, seed,
ablation, output function, fingerprints). Every file is written under a temporary name and
renamed into place when complete.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from coar.atomic import atomic_path
from coar.constants import EXPORT_FORMATS as FORMATS
from coar.result import Attributions


def export(result: Attributions, path: str | Path, fmt: str) -> Path:
    """Write `result` to `path` in format `fmt` (see FORMATS); return the path."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401  (pandas writes Parquet through it)
        except ImportError:
            raise ImportError("--format parquet needs pyarrow, which is not installed: pip install pyarrow, "
                              "or use --format csv or npz") from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        if fmt == "npz":
            with open(tmp, "wb") as f:  # np.savez would append ".npz" to the temporary name
                c = result.components
                np.savez(f, weight=result.weight, bias=result.bias, example_ids=np.asarray(result.example_ids),
                         component_names=np.asarray([r.name for r in c]), modules=np.asarray([r.module for r in c]),
                         units=np.asarray([r.unit for r in c], dtype=np.int64), kinds=np.asarray([r.kind for r in c]),
                         layers=np.asarray([r.layer for r in c], dtype=np.int64), info=np.asarray(json.dumps(result.info)))
        elif fmt == "parquet":
            result.to_pandas("wide").to_parquet(tmp)
        else:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(["example", "bias", *(c.name for c in result.components)])
                for example, bias, row in zip(result.example_ids, result.bias, result.weight):
                    writer.writerow([example, repr(float(bias)), *(repr(float(v)) for v in row)])
    return path
