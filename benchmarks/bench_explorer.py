"""Size and browser load time of the attribution explorer page (coar/explorer.py).

Not a test. Builds a synthetic run folder (prepare.json, components.json, example ids, image
examples, attributions written block by block with coar.h5format's writer, one held-out file,
comparison.json) at 10,000 examples x 20,000 components by default, builds its page, and opens
it in headless Chromium (Selenium + chromedriver, tests/browser.py), printing the build time, the
page's size, the size of the thumbnail folder beside it, and the load time (navigation start to
the page's ready mark) over a few loads. With --page it measures an existing page instead (e.g.
the default run's results/digits/explorer.html), and --screenshots DIR saves one PNG per view.

    python benchmarks/bench_explorer.py                                  # synthetic 10,000 x 20,000
    python benchmarks/bench_explorer.py --examples 2000 --components 4000
    python benchmarks/bench_explorer.py --page results/digits/explorer.html --screenshots docs/images
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ALPHA = 0.05
LAYER_UNITS = 500  # components per synthetic layer
HELDOUT = 100  # held-out masks
RANK = 8  # of the synthetic attributions
BLOCK = 1000  # examples written at once
FINGERPRINTS = {"model_fingerprint": "synthetic-model", "examples_fingerprint": "synthetic-examples"}


def synthetic_run(folder: Path, n: int, N: int) -> Path:
    """A finished-looking run folder of n examples x N components (see the module docstring)."""
    from safetensors.numpy import save_file

    from coar import __version__, h5format
    from coar.components import ComponentGroup, ComponentSet

    folder.mkdir(parents=True, exist_ok=True)
    groups, start = [], 0
    while start < N:
        size = min(LAYER_UNITS, N - start)
        groups.append(ComponentGroup(f"layer{len(groups)}.conv", "conv", size, start))
        start += size
    components = ComponentSet(groups)
    (folder / "components.json").write_text(components.to_json())
    ids = [f"example-{i}" for i in range(n)]
    (folder / "example_ids.json").write_text(json.dumps(ids))
    fingerprints = {**FINGERPRINTS, "components_fingerprint": components.fingerprint}
    (folder / "prepare.json").write_text(json.dumps({"task": "synthetic", "output_fn": "margin", "n_examples": n,
                                                     "n_components": N, "examples_kind": "tensors", **fingerprints}))
    rng = np.random.default_rng(0)
    images = rng.random((n, 3, 32, 32), dtype=np.float32)
    save_file({"inputs": images, "labels": rng.integers(0, 10, n)}, str(folder / "examples.safetensors"))
    A, B = rng.standard_normal((n, RANK)).astype(np.float32), rng.standard_normal((RANK, N)).astype(np.float32)
    attrs = {"seed": 0, "alpha": ALPHA, "encoding": h5format.ENCODING, "solver": "synthetic", "method": "ols",
             "n_masks": 1, "ablation": "weight", "output_fn": "margin", "precision": "fp32", **fingerprints}
    with h5format.attributions_writer(folder / "attributions.h5", components.table(), ids, attrs) as writer:
        for a in range(0, n, BLOCK):
            b = min(a + BLOCK, n)
            weight = A[a:b] @ B + 0.1 * rng.standard_normal((b - a, N), dtype=np.float32)
            writer.write(a, weight, rng.standard_normal(b - a).astype(np.float32), np.ones(b - a))
    masks = rng.random((HELDOUT, N)) < ALPHA
    outputs = rng.standard_normal((HELDOUT, n)).astype(np.float32)
    (folder / "heldout").mkdir(exist_ok=True)
    h5format.write_shard(folder / "heldout" / f"alpha-{ALPHA:g}.h5", masks, outputs,
                         {"seed": 0, "alpha": ALPHA, "n_components": N, "n_examples": n, **fingerprints,
                          "output_fn": "margin", "ablation": "weight", "precision": "fp32", "coar_version": __version__,
                          "encoding": h5format.ENCODING, "shard": 0, "row_start": 0, "row_stop": HELDOUT})
    scores = {method: {f"{ALPHA:g}": {"mean_correlation": mean,
                                      "correlations": np.clip(rng.normal(mean, 0.1, n), -1, 1).tolist()}}
              for method, mean in (("coar", 0.8), ("loo", 0.6))}
    (folder / "comparison.json").write_text(json.dumps({"alpha": f"{ALPHA:g}", "methods": list(scores),
                                                        "alphas": [f"{ALPHA:g}"], "by_method": scores}))
    return folder


def load_times(page: Path, loads: int) -> list[float]:
    """Milliseconds from navigation start to the page's ready mark, one per fresh load."""
    from tests.browser import headless_chromium, open_page, severe_console_entries

    times = []
    with headless_chromium() as driver:
        for _ in range(loads):
            driver.get("about:blank")
            times.append(open_page(driver, page, timeout=600))
        if errors := severe_console_entries(driver):
            raise RuntimeError(f"the browser console reported errors: {errors}")
    return times


def screenshots(page: Path, folder: Path) -> list[Path]:
    """One PNG per view of `page`: the examples, an example, its top component, methods (and edits if any)."""
    from tests.browser import headless_chromium, open_page, wait_for

    folder.mkdir(parents=True, exist_ok=True)
    shots = []
    with headless_chromium(1280, 900) as driver:
        open_page(driver, page)

        def shot(name: str) -> None:
            time.sleep(0.5)  # let plotly finish drawing
            shots.append(folder / f"explorer-{name}.png")
            driver.save_screenshot(str(shots[-1]))

        shot("examples")
        wait_for(driver, "document.querySelector('#examples-table a.example-link')").click()
        wait_for(driver, "document.getElementById('example-title')")
        shot("example")
        driver.find_element("css selector", "#top-components a.component-link").click()
        wait_for(driver, "document.getElementById('component-title')")
        shot("component")
        driver.execute_script("location.hash = '#methods'")
        wait_for(driver, "document.getElementById('methods-table')")
        shot("methods")
        if driver.execute_script("return Object.keys(D.edits).length"):
            driver.execute_script("location.hash = '#edits'")
            shot("edits")
    return shots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=10_000)
    parser.add_argument("--components", type=int, default=20_000)
    parser.add_argument("--page", type=Path, help="measure this existing page instead of a synthetic run's")
    parser.add_argument("--loads", type=int, default=3, help="browser loads to time")
    parser.add_argument("--screenshots", type=Path, help="folder for one PNG per view")
    args = parser.parse_args()
    from coar import explorer

    with tempfile.TemporaryDirectory() as tmp:
        page = args.page
        if page is None:
            started = time.perf_counter()
            run = synthetic_run(Path(tmp) / "run", args.examples, args.components)
            print(f"synthetic run {args.examples} x {args.components} written in {time.perf_counter() - started:.1f} s")
            started = time.perf_counter()
            page = explorer.build(run)
            print(f"page built in {time.perf_counter() - started:.1f} s")
        thumbs = page.parent / explorer.THUMBS
        folder = sum(p.stat().st_size for p in thumbs.glob("*.png")) if thumbs.exists() else 0
        print(f"page size: {page.stat().st_size / 2**20:.1f} MiB; thumbnails beside it: {folder / 2**20:.1f} MiB")
        times = load_times(page, args.loads)
        print(f"browser load (navigation start -> ready), {args.loads} loads: median {statistics.median(times) / 1000:.2f} s"
              f" (min {min(times) / 1000:.2f}, max {max(times) / 1000:.2f})")
        if args.screenshots:
            for path in screenshots(page, args.screenshots):
                print(f"screenshot: {path}")


if __name__ == "__main__":
    main()
