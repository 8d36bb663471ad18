"""The attribution explorer: one self-contained HTML page per run (results/<run>/explorer.html).

COAR's answer is per example and per component; the page lets a user look at it: the examples
with their held-out correlation under every method, one example's strongest components and a
layer-by-unit heatmap of its attributions, one component's most-moved examples and the spread of
its effects, the methods x alphas table, and a run's edits when it has some: what each chose and
whether its checks held, then the curves and per-example changes behind the choice. A component
has the one name and layer the command line, the Python API and exports give it
(ComponentSet.names() and .layers(); component_labels), in every label, link and address.

The page is one file that opens from a file system or an e-mail attachment: its styles, its
script, the plotting library (plotly.js's cartesian bundle, vendored under explorer_assets/ with
its licence) and the data (JSON inside the page) are all inlined, and nothing is fetched. It
holds what the views need, not the attribution matrix: top components per example, top examples
per component, histograms, and heatmaps binned and quantised to a byte budget, so that at 50,000
examples x 22,720 components it stays well under 50 MB. Thumbnails go inline while they fit in
INLINE_THUMB_BYTES; beyond that they are written to a folder beside the page (THUMBS) and loaded
when shown.

Everything is read as data (JSON, HDF5, safetensors): nothing from the run folder executes code,
and the task's own code is never run (thumbnails come from the saved example tensors only). An
edit's files are trusted only as far as its report's SHA-256 digests vouch for them (_edits).
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import re
import sys
import webbrowser
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coar import h5format
from coar.atomic import atomic_path
from coar.edit import record
from coar.evaluate import predict
from coar.run import Run
from coar.components import ComponentSet
from coar.saved_task import ARRAYS, open_arrays

ASSETS = Path(__file__).with_name("explorer_assets")
PLOTLY = "plotly-cartesian.min.js"
PAGE = "explorer.html"
THUMBS = "explorer_thumbs"
"""Folder beside the page for thumbnails that do not fit inline (large runs only)."""

TOP_COMPONENTS = 10  # per example, by |effect|
TOP_EXAMPLES = 10  # per component and direction
HISTOGRAM_BINS = 20  # of one component's effects over the examples
HEATMAP_BYTES = 8 << 20  # all examples' heatmap cells together (one byte each)
HEATMAP_MIN_CELLS = 64  # per example, however many examples
HELDOUT_BYTES = 4 << 20  # all examples' held-out (true, predicted) pairs together (float32)
HELDOUT_MIN_POINTS = 8  # per example, however many examples
INLINE_THUMB_BYTES = 4 << 20
THUMB_PIXELS = 64  # longest side of a thumbnail
MAX_TOKENS = 128  # token ids shown per example
EDIT_FILE_BYTES = 4 << 20  # a plan.json beyond it is named, not shown
EDIT_POINTS = 4000  # per edit, examples in its predicted-vs-realised plot
BLOCK_ELEMENTS = 1 << 24  # weight entries handled at once (bounds temporaries)


@dataclass
class RunData:
    """What the page is made from, read from a finished run folder by `read_run`."""

    run: Run
    weight: np.ndarray  # (n, N) float32: COAR's attributions
    bias: np.ndarray  # (n,) COAR's intercepts: the predicted output with nothing ablated
    alpha: str  # the training alpha, as text (the keys of comparison.json)
    comparison: dict | None  # comparison.json
    evaluation: dict | None  # evaluation.json
    heldout: tuple[np.ndarray, np.ndarray] | None  # first masks and outputs at the training alpha
    edits: dict[str, dict]  # edit name -> {report, ablated, plan}: see _edits


def read_run(run_dir: str | Path, heldout_rows: int) -> RunData:
    """Read a finished run: attributions checked against prepare.json's fingerprints, components and ids,
    the JSON results, and the first `heldout_rows` held-out rows at the training alpha.
    The one place the explorer reads results, so another reader can replace it."""
    run = Run(run_dir)
    attr = run.read_attributions(run.attributions, {})  # this run's sizes, fingerprints, component names and ids
    if "alpha" not in attr.attrs:
        raise ValueError(f"{run.attributions} records no alpha; it was not written by coar's fit step: rerun it")
    alpha = f"{float(attr.attrs['alpha']):g}"
    heldout = None
    if run.heldout(alpha).exists():
        made = {key: attr.attrs[key] for key in ("ablation", "output_fn") if key in attr.attrs}
        expect = {**run.expect, **made, "alpha": float(alpha)}  # the same ablation and output as the attributions
        heldout = next(h5format.iter_chunks(run.heldout(alpha), heldout_rows, expect))
    return RunData(run=run, weight=attr.weight, bias=attr.bias, alpha=alpha,
                   comparison=_json_or_none(run.comparison), evaluation=_json_or_none(run.evaluation),
                   heldout=heldout, edits=_edits(run))


def _json_or_none(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ValueError(f"{path} cannot be read as JSON ({error}); rerun the step that writes it") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} is not a JSON object; rerun the step that writes it")
    return value


def _edits(run: Run) -> dict[str, dict]:
    """Every applied edit (edits/<name>/ holding report.json), for the Edits view: its report, read
    only through coar.edit.record.read_report (every file it names checked against its SHA-256, so an
    altered weights file refuses the page, naming the file); the components it ablated (ablated.json,
    read when the report vouches for it); plan.json as plain JSON (over EDIT_FILE_BYTES: named, not
    read). An edit planned but not applied has no report and is left out."""
    found: dict[str, dict] = {}
    for folder in record.edit_folders(run.dir):
        report = record.read_report(folder, run.fingerprints)
        ablated = (record.read_json_file(folder / record.ABLATED, "an edit's ablated.json", record.RERUN)
                   if record.ABLATED in report["files"] else None)
        found[folder.name] = _finite({"report": _thinned(report), "ablated": ablated, "plan": _plan(folder / record.PLAN)})
    return found


def _plan(path: Path) -> dict | None:
    """plan.json as plain JSON (None when absent); one over EDIT_FILE_BYTES is named, not read."""
    if not path.is_file():
        return None
    size = path.stat().st_size
    if size > EDIT_FILE_BYTES:
        return {"not shown": f"{path.name} is {size} bytes (over {EDIT_FILE_BYTES})"}
    return record.read_json_file(path, "an edit's plan.json", "rerun its plan step (snakemake ... --forcerun edit_plan)")


def _thinned(report: dict) -> dict:
    """The report with at most EDIT_POINTS of its per-example (predicted, realised) changes, evenly
    spaced over the examples; "n_examples" beside them says how many it holds."""
    pairs = report.get("predicted_vs_realised")
    examples = pairs.get("examples") if isinstance(pairs, dict) else None
    if not isinstance(examples, list):
        return report
    keep = np.unique(np.linspace(0, len(examples) - 1, min(len(examples), EDIT_POINTS)).round().astype(int))
    shown = {**pairs, "examples": [examples[i] for i in keep], "n_examples": len(examples)}
    return {**report, "predicted_vs_realised": shown}


def _finite(value: object) -> object:
    """JSON value with NaN and infinities replaced by null (the page parses strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


# ----------------------------------------------------------------------------- page data


def _b64(array: np.ndarray, dtype: str) -> str:
    """A little-endian typed array as base64 (decoded in the page into the matching JS array)."""
    return base64.b64encode(np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()).decode()


def _row_blocks(n: int, width: int):
    step = max(1, BLOCK_ELEMENTS // max(width, 1))
    return ((i, min(i + step, n)) for i in range(0, n, step))


def top_components(weight: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per example, the k components of largest |effect|, strongest first: (indices, effects)."""
    n, N = weight.shape
    k = min(k, N)
    index = np.empty((n, k), np.int32)
    for a, b in _row_blocks(n, N):
        magnitude = np.abs(weight[a:b])
        part = np.argpartition(-magnitude, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(magnitude, part, 1), axis=1, kind="stable")
        index[a:b] = np.take_along_axis(part, order, 1)
    return index, np.take_along_axis(weight, index, 1)


def heatmap_bins(sizes: list[int], n_examples: int) -> list[int]:
    """Columns per layer of every example's heatmap: a layer's units binned so that all examples'
    cells fit HEATMAP_BYTES (a layer with no more units than its share keeps one column per unit)."""
    cells = max(HEATMAP_MIN_CELLS, HEATMAP_BYTES // max(n_examples, 1))
    if sum(sizes) <= cells:
        return list(sizes)
    low, high = 1, max(sizes)  # the largest share per layer whose columns fit `cells`
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if sum(min(size, mid) for size in sizes) <= cells else (low, mid - 1)
    return [min(size, low) for size in sizes]


def heatmaps(weight: np.ndarray, groups: list[tuple[int, int]], bins: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per example, its layer-by-unit heatmap: each cell the effect of largest |effect| among its
    bin's units, as int8 of effect / scale, with scale the example's largest |effect|."""
    n = weight.shape[0]
    scale = np.ones(n, np.float32)
    cells = np.empty((n, sum(bins)), np.int8)
    for a, b in _row_blocks(n, weight.shape[1]):
        largest = np.abs(weight[a:b]).max(axis=1)
        scale[a:b] = np.where(largest > 0, largest, 1)
        column = 0
        for (start, size), count in zip(groups, bins):
            edges = (np.arange(count) * size) // count
            block = weight[a:b, start:start + size]
            high, low = np.maximum.reduceat(block, edges, axis=1), np.minimum.reduceat(block, edges, axis=1)
            signed = np.where(high >= -low, high, low) / scale[a:b, None]
            cells[a:b, column:column + count] = np.rint(np.clip(signed, -1, 1) * 127).astype(np.int8)
            column += count
    return cells, scale


@dataclass
class ComponentSummary:
    """Per component: the examples it moves most up and down, its mean effect and a histogram."""

    up: np.ndarray  # (N, k) example indices, largest effect first
    up_value: np.ndarray
    down: np.ndarray  # (N, k), most negative first
    down_value: np.ndarray
    mean: np.ndarray  # (N,)
    low: np.ndarray  # (N,) histogram range
    high: np.ndarray
    counts: np.ndarray  # (N, HISTOGRAM_BINS)


def component_summary(weight: np.ndarray, k: int) -> ComponentSummary:
    """ComponentSummary of every column of `weight` (examples x components), in column blocks."""
    n, N = weight.shape
    k = min(k, n)
    up, down = np.empty((N, k), np.int32), np.empty((N, k), np.int32)
    counts = np.empty((N, HISTOGRAM_BINS), np.int32)
    mean = weight.mean(axis=0, dtype=np.float64).astype(np.float32)
    low, high = weight.min(axis=0), weight.max(axis=0)
    for a, b in _row_blocks(N, n):
        block = weight[:, a:b]
        for target, sign in ((up, -1), (down, 1)):
            part = np.argpartition(sign * block, k - 1, axis=0)[:k]
            order = np.argsort(np.take_along_axis(sign * block, part, 0), axis=0, kind="stable")
            target[a:b] = np.take_along_axis(part, order, 0).T
        span = np.where(high[a:b] > low[a:b], high[a:b] - low[a:b], 1)
        which = np.clip(((block - low[a:b]) / span * HISTOGRAM_BINS).astype(np.int64), 0, HISTOGRAM_BINS - 1)
        flat = which + HISTOGRAM_BINS * np.arange(b - a)
        counts[a:b] = np.bincount(flat.ravel(), minlength=(b - a) * HISTOGRAM_BINS).reshape(b - a, HISTOGRAM_BINS)
    columns = np.arange(N)[:, None]
    return ComponentSummary(up, weight[up, columns], down, weight[down, columns], mean, low, high, counts)


def heldout_points(n_examples: int, n_rows: int) -> int:
    """Held-out masks kept per example for its predicted-vs-true plot (all that fit HELDOUT_BYTES)."""
    return min(n_rows, max(HELDOUT_MIN_POINTS, HELDOUT_BYTES // (8 * max(n_examples, 1))))


def _correlations(data: RunData) -> dict:
    """Methods, alphas, mean table and per-example correlations (NaN = undefined) from
    comparison.json, else COAR's alone from evaluation.json; refused when sizes disagree."""
    n = data.run.n_examples
    if data.comparison is not None:
        source, path = data.comparison, data.run.comparison
        by_method = source.get("by_method")
    elif data.evaluation is not None:
        source, path = data.evaluation, data.run.evaluation
        by_method = {"coar": source.get("by_alpha")}
    else:
        return {"methods": [], "alphas": [], "mean": {}, "per_example": {}}
    if not isinstance(by_method, dict) or not all(isinstance(v, dict) for v in by_method.values()):
        raise ValueError(f"{path} has no per-method scores (by_method / by_alpha); rerun the step that writes it")
    per_example, mean = {}, {}
    for method, by_alpha in by_method.items():
        for alpha, score in by_alpha.items():
            values = score.get("correlations") if isinstance(score, dict) else None
            if not isinstance(values, list) or len(values) != n:
                raise ValueError(f"{path}: {method} at alpha {alpha} has no list of {n} per-example correlations "
                                 "(the run's example count); rerun the step that writes it")
            array = np.array([np.nan if v is None else float(v) for v in values], np.float32)
            per_example.setdefault(method, {})[alpha] = _b64(array, "f4")
            mean.setdefault(method, {})[alpha] = _finite(score.get("mean_correlation"))
    alphas = sorted({a for v in by_method.values() for a in v}, key=float)
    return {"methods": list(by_method), "alphas": alphas, "mean": mean, "per_example": per_example}


def _examples_view(run: Run) -> tuple[list | None, bool, int]:
    """(labels, whether inputs are images, token ids to show per example) from the saved example
    tensors (a Dataset task saves none: no labels, thumbnails or tokens)."""
    if not (run.dir / ARRAYS).exists():
        return None, False, 0
    with open_arrays(run.dir) as f:  # a file that is not safetensors is refused, naming it
        keys = set(f.keys())
        labels = f.get_tensor("labels") if "labels" in keys else None
        inputs = f.get_slice("inputs") if "inputs" in keys else None
        shape = list(inputs.get_shape()) if inputs is not None else None
        dtype = inputs.get_dtype() if inputs is not None else None
    n = run.n_examples
    labels = labels.tolist() if labels is not None and labels.ndim == 1 and len(labels) == n else None
    if shape is None or shape[0] != n:
        return labels, False, 0
    if dtype.startswith(("I", "U")) and len(shape) == 2:
        return labels, False, min(shape[1], MAX_TOKENS)
    return labels, len(shape) == 3 or (len(shape) == 4 and shape[1] in (1, 3)), 0


def _input_rows(run: Run, start: int, stop: int) -> np.ndarray:
    with open_arrays(run.dir) as f:
        return f.get_slice("inputs")[start:stop]


def thumbnail(image: np.ndarray) -> bytes:
    """PNG of one (C, H, W) or (H, W) input, each image stretched to its own range, longest side
    at most THUMB_PIXELS."""
    from PIL import Image

    array = np.asarray(image, np.float64)
    if array.ndim == 3:
        array = array[0] if array.shape[0] == 1 else np.moveaxis(array, 0, -1)
    low, high = np.nanmin(array), np.nanmax(array)
    scaled = np.zeros_like(array) if not high > low else (array - low) / (high - low)
    picture = Image.fromarray(np.nan_to_num(scaled * 255).round().astype(np.uint8))
    picture.thumbnail((THUMB_PIXELS, THUMB_PIXELS))
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


def _thumbnails(run: Run, page: Path) -> dict | None:
    """Inline data URIs while they fit INLINE_THUMB_BYTES, else PNG files in THUMBS beside the page."""
    inline: list[bytes] | None = []
    size, folder = 0, page.parent / THUMBS
    for a, b in _row_blocks(run.n_examples, 1 << 16):  # 256 inputs per read
        for index, image in enumerate(_input_rows(run, a, b), start=a):
            png = thumbnail(image)
            size += len(png)
            if inline is not None and size > INLINE_THUMB_BYTES:  # from now on, files beside the page
                folder.mkdir(exist_ok=True)
                for i, earlier in enumerate(inline):
                    (folder / f"{i}.png").write_bytes(earlier)
                inline = None
            if inline is None:
                (folder / f"{index}.png").write_bytes(png)
            else:
                inline.append(png)
    if inline is None:
        return {"folder": THUMBS}
    return {"inline": ["data:image/png;base64," + base64.b64encode(p).decode() for p in inline]}


def component_labels(components: ComponentSet) -> tuple[list[dict], dict]:
    """The components' one name and layer on every surface (ComponentSet.names() and .layers(),
    as the command line, the Python API and exports print them), compactly: per group its `name`
    (what precedes "[unit]" in each of its names: the module, or "module:kind") and `layer`. Every
    name is checked against that form; should one differ, the page holds the whole list instead
    ({"names": [...], "layers": [...]}) and a group's `name` only labels its heatmap row."""
    names, layers = components.names(), components.layers()
    groups, compact = [], True
    for g in components.groups:
        first = names[g.start]
        prefix = first[: -len("[0]")] if first.endswith("[0]") else f"{g.module}:{g.kind}"
        compact = compact and all(names[g.start + u] == f"{prefix}[{u}]" for u in range(g.size)) \
            and len(set(layers[g.start:g.stop])) == 1
        groups.append({"module": g.module, "kind": g.kind, "start": g.start, "size": g.size,
                       "name": prefix, "layer": layers[g.start]})
    return groups, ({} if compact else {"names": names, "layers": layers})


def page_data(data: RunData, page: Path) -> dict:
    """The JSON the page's script reads (typed arrays as base64)."""
    run, weight = data.run, data.weight
    n, N = weight.shape
    groups = run.components.groups
    bins = heatmap_bins([g.size for g in groups], n)
    cells, scale = heatmaps(weight, [(g.start, g.size) for g in groups], bins)
    top_index, top_value = top_components(weight, TOP_COMPONENTS)
    summary = component_summary(weight, TOP_EXAMPLES)
    labels, images, tokens = _examples_view(run)
    heldout = None
    if data.heldout is not None:
        masks, outputs = data.heldout
        points = heldout_points(n, len(masks))
        masks, outputs = masks[:points], outputs[:points]
        predicted = np.empty((n, points), np.float32)
        for a, b in _row_blocks(n, N):  # predict computes in float64: a block at a time, not the matrix
            predicted[a:b] = predict(weight[a:b], data.bias[a:b], masks).T
        heldout = {"alpha": data.alpha, "points": int(points), "true": _b64(outputs.T, "f4"),
                   "predicted": _b64(predicted, "f4")}
    labelled, full = component_labels(run.components)
    token_ids = None
    if tokens:
        token_ids = _input_rows(run, 0, n)[:, :tokens].tolist()
    return {
        "run": run.name,
        "task": run.info.get("task"),
        "output_fn": run.info.get("output_fn"),
        "alpha": data.alpha,
        "n_examples": n,
        "n_components": N,
        "ids": run.example_ids,
        "labels": labels,
        "intercept": _b64(data.bias, "f4"),
        "groups": labelled,
        "n_layers": len({g["module"] for g in labelled}),
        "component_names": full.get("names"),
        "component_layers": full.get("layers"),
        "correlations": _correlations(data),
        "top": {"k": int(top_index.shape[1]), "index": _b64(top_index, "i4"), "value": _b64(top_value, "f4")},
        "heatmap": {"bins": bins, "cells": _b64(cells, "i1"), "scale": _b64(scale, "f4")},
        "components": {"k": int(summary.up.shape[1]), "up": _b64(summary.up, "i4"), "up_value": _b64(summary.up_value, "f4"),
                       "down": _b64(summary.down, "i4"), "down_value": _b64(summary.down_value, "f4"),
                       "mean": _b64(summary.mean, "f4"), "low": _b64(summary.low, "f4"), "high": _b64(summary.high, "f4"),
                       "bins": HISTOGRAM_BINS, "counts": _b64(summary.counts, "i4")},
        "heldout": heldout,
        "thumbs": _thumbnails(run, page) if images else None,
        "tokens": token_ids,
        "edits": data.edits,
    }


# ----------------------------------------------------------------------------- the page

_SLOT = re.compile(r"<!--coar:(style|plotly|data|app)-->")


def render(data: dict) -> str:
    """The page: the template with its style, plotly.js, the data and the app script inlined."""
    text = {name: (ASSETS / name).read_text(encoding="utf-8") for name in ("explorer.html", "explorer.css", "explorer.js", PLOTLY)}
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
    slots = {"style": text["explorer.css"], "plotly": text[PLOTLY], "data": payload, "app": text["explorer.js"]}
    return _SLOT.sub(lambda match: slots[match.group(1)], text["explorer.html"])


def build(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the run's explorer page (default results/<run>/explorer.html); return its path."""
    run = Run(run_dir)
    page = Path(out) if out is not None else run.dir / PAGE
    data = read_run(run_dir, heldout_rows=heldout_points(run.n_examples, 1 << 30))
    html = render(page_data(data, page))
    with atomic_path(page, size_hint=len(html)) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return page


def has_display() -> bool:
    """Whether a browser window can be opened here (Linux without DISPLAY/WAYLAND_DISPLAY cannot)."""
    return not sys.platform.startswith("linux") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def changed_since(run_dir: str | Path, page: Path) -> list[Path]:
    """The run's files newer than `page` (not its logs, benchmarks and shards, which the page
    does not read): what the page would not show."""
    built = page.stat().st_mtime
    skipped = {"logs", "benchmarks", "shards"}
    return [path for path in Path(run_dir).rglob("*") if path.is_file() and path != page
            and not skipped & set(path.relative_to(run_dir).parts[:1]) and path.stat().st_mtime > built]


def explore(run_dir: str | Path, out: str | Path | None = None, rebuild: bool = False, open_browser: bool = True) -> str:
    """`coar explore`: build the page if missing, older than one of the run's files (an edit
    made since, say) or asked to; open it where a display exists; return a line saying where it is."""
    page = Path(out) if out is not None else Path(run_dir) / PAGE
    if rebuild or not page.exists() or changed_since(run_dir, page):
        build(run_dir, page)
    if open_browser and has_display() and webbrowser.open(page.resolve().as_uri()):
        return f"opened {page}"
    return f"explorer page: {page} (open it in a web browser)"
