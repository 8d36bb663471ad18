"""Methods side by side and the Snakemake report: the comparison table, the figures, one
self-contained HTML report with every section, and the report opened in headless Chromium."""

import json
import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from coar.evaluate import compare, correlation_table, module_totals
from coar.constants import REPORT_FIGURES
from tests.snakemake_runs import TEST_CONFIG, TINY, snakemake

RUN = f"results/{TINY['run']}"
METHODS = ["coar", "loo", "grad_x_param", "conductance", "internal_influence"]
SECTIONS = ["1. Summary", "2. Evaluation", "3. Attributions", "4. Timings"]
PNGS = [*(f"{name}.png" for name in REPORT_FIGURES), "correlation_histogram.png"]


def test_compare_scores_every_method_on_the_same_heldout_masks():
    rng = np.random.default_rng(0)
    masks = rng.random((40, 6)) < 0.3
    weight, bias = rng.normal(size=(3, 6)), rng.normal(size=3)
    outputs = masks @ weight.T + bias
    result = compare({"exact": (weight, bias), "flipped": (-weight, bias)}, {"0.3": (masks, outputs)}, ["a", "b", "c"])
    assert result["exact"]["0.3"]["mean_correlation"] == pytest.approx(1)
    assert result["flipped"]["0.3"]["mean_correlation"] == pytest.approx(-1)
    table = correlation_table(result, "0.3")
    assert table.splitlines() == ["| method | 0.3 (training) |", "|---|---|", "| exact | 1.000 |", "| flipped | -1.000 |"]


def test_module_totals_sum_each_layers_columns_and_average_over_examples():
    weight = np.array([[1.0, -2.0, 4.0], [3.0, 0.0, -4.0]])
    totals = module_totals(weight, ["conv1", "conv1", "conv2"])
    assert totals == {"conv1": (1.0, 3.0), "conv2": (0.0, 4.0)}


@pytest.fixture(scope="module")
def reported_run(tiny_run):
    """The tiny run of the whole workflow (tests/conftest.py), and its report."""
    workdir = tiny_run
    result = snakemake(workdir, "--report", "report.html", config=TEST_CONFIG)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def test_comparison_holds_coar_and_every_baseline_at_every_alpha(reported_run):
    run = reported_run / RUN
    comparison = json.loads((run / "comparison.json").read_text())
    assert comparison["methods"] == METHODS and comparison["alphas"] == ["0.025", "0.05", "0.1"]
    evaluation = json.loads((run / "evaluation.json").read_text())
    for alpha in comparison["alphas"]:
        # COAR scored beside the baselines is COAR scored alone.
        assert comparison["mean_correlation"]["coar"][alpha] == pytest.approx(evaluation["by_alpha"][alpha]["mean_correlation"])
        for method in METHODS:
            assert -1 <= comparison["mean_correlation"][method][alpha] <= 1
    table = (run / "comparison.md").read_text()
    assert "| method | 0.025 | 0.05 (training) | 0.1 |" in table
    assert all(f"| {method} |" in table for method in METHODS)


def test_every_figure_is_saved_as_png_under_plots(reported_run):
    for name in PNGS:
        assert (reported_run / RUN / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_report_is_one_self_contained_html_file_with_every_section(reported_run):
    html = (reported_run / "report.html").read_text()
    for text in [*SECTIONS, *PNGS, "comparison.md", "summary.md", "Correlation table", "Predicted vs true",
                 "summed per layer", "Wall seconds"]:
        assert text in html, text
    assert len(re.findall(r"data:image/png;", html)) >= len(PNGS)
    assert not re.search(r"<(script|img|link)[^>]+(src|href)=\"(?!data:)", html), "the report loads an external file"


PROBE = """<script>
window.addEventListener("load", async () => {
  const out = document.createElement("pre");
  out.id = "render-check";
  document.body.appendChild(out);
  try {
    for (let i = 0; i < 500 && !document.querySelector("#app nav"); i++) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    const shown = {};
    for (const [path, entry] of Object.entries(results)) {
      if (!entry.mime_type.startsWith("image/")) continue;
      ReactDOM.flushSync(() => app.setView({content: "img", contentPath: entry.data_uri, resultPath: path}));
      const img = Array.from(document.querySelectorAll("#app img")).find((x) => x.getAttribute("src") === entry.data_uri);
      if (img && !img.complete) {
        await new Promise((resolve) => { img.addEventListener("load", resolve); img.addEventListener("error", resolve); });
      }
      shown[path] = img ? [img.naturalWidth, img.naturalHeight] : null;
    }
    out.textContent = JSON.stringify(shown);
  } catch (error) {
    out.textContent = JSON.stringify({error: String(error)});
  }
});
</script>
"""


def shown_images(report: Path) -> dict:
    """Open `report` in headless Chromium and show each image result in the report's own viewer.

    Returns {result path: [width, height] as the browser decoded it (0 x 0 = broken), or None
    if the viewer showed no image}. A probe script appended to a copy of the report drives the
    report's app (the same view its result buttons open) and writes what it saw into the page.
    """
    head, body_end, tail = report.read_text().rpartition("</body>")
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "report.html"
        probe.write_text(head + PROBE + body_end + tail)
        result = subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp}/profile",
             "--virtual-time-budget=20000", "--dump-dom", probe.as_uri()],
            capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="render-check">(.*?)</pre>', result.stdout, re.S)
    assert found and found.group(1), f"the probe did not finish: {result.stderr[-2000:]}"
    shown = json.loads(found.group(1))
    assert "error" not in shown, shown
    return shown


def png_size(path: Path) -> list[int]:
    width, height = struct.unpack(">II", path.read_bytes()[16:24])
    return [width, height]


needs_chromium = pytest.mark.skipif(shutil.which("chromium") is None,
                                    reason="headless Chromium not installed (Debian: apt-get install -y chromium)")


@needs_chromium
def test_chromium_shows_every_figure_of_the_report(reported_run):
    shown = shown_images(reported_run / "report.html")
    assert sorted(Path(p).name for p in shown) == sorted(PNGS)
    for path, size in shown.items():
        assert size == png_size(reported_run / path), f"{path} is broken in the browser: {size}"


@needs_chromium
def test_the_browser_check_sees_a_broken_figure(reported_run, tmp_path):
    html = (reported_run / "report.html").read_text()
    start = html.index("filename=step_timings.png;base64,") + len("filename=step_timings.png;base64,")
    broken = tmp_path / "broken.html"
    broken.write_text(html[:start] + "AAAA" + html[start + 4:])
    shown = shown_images(broken)
    assert shown[f"{RUN}/plots/step_timings.png"] == [0, 0]
    assert shown[f"{RUN}/plots/correlation_table.png"] == png_size(reported_run / f"{RUN}/plots/correlation_table.png")
