"""The attribution explorer (coar/explorer.py): what the page holds, that it is one self-contained
file that fetches nothing, that changed inputs are refused, and a click-through in headless
Chromium: examples -> one example -> its top component -> back, with no console error."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from coar import explorer
from coar.evaluate import predict
from coar.h5format import FormatError, iter_chunks, read_attributions
from coar.run import Run
from tests.browser import browser_problem, headless_chromium, open_page, requested_urls, severe_console_entries, wait_for
from tests.snakemake_runs import TINY

RUN = f"results/{TINY['run']}"
RESNET50_CONV_FILTERS = [64] + [64, 64, 256] * 3 + [128, 128, 512] * 4 + [256, 256, 1024] * 6 + [512, 512, 2048] * 3
"""Filters per conv layer of ResNet-50's blocks (no shortcut convs): the 22,720 components of the paper's ImageNet run."""


def page_json(page: Path) -> dict:
    """The data the page's script reads."""
    found = re.search(r'<script id="coar-data" type="application/json">(.*?)</script>', page.read_text(), re.S)
    return json.loads(found.group(1))


def decoded(text: str, dtype: str) -> np.ndarray:
    import base64

    return np.frombuffer(base64.b64decode(text), dtype=np.dtype(dtype).newbyteorder("<"))


# ----------------------------------------------------------------------------- what the page holds


def test_top_components_are_the_largest_absolute_effects_strongest_first():
    weight = np.array([[0.1, -3.0, 2.0, 0.5], [4.0, 0.0, -0.2, -1.0]], np.float32)
    index, value = explorer.top_components(weight, 2)
    assert index.tolist() == [[1, 2], [0, 3]]
    assert value.tolist() == [[-3.0, 2.0], [4.0, -1.0]]


def test_heatmap_keeps_one_column_per_unit_when_it_fits_and_bins_to_the_byte_budget_otherwise():
    assert explorer.heatmap_bins([8, 16, 64], 360) == [8, 16, 64]
    bins = explorer.heatmap_bins(RESNET50_CONV_FILTERS, 50_000)
    assert sum(RESNET50_CONV_FILTERS) == 22_720
    assert sum(bins) * 50_000 <= max(explorer.HEATMAP_BYTES, explorer.HEATMAP_MIN_CELLS * 50_000)
    assert all(1 <= b <= size for b, size in zip(bins, RESNET50_CONV_FILTERS))


def test_a_heatmap_cell_is_the_signed_strongest_effect_of_its_units_scaled_to_the_examples_largest():
    weight = np.array([[1.0, -4.0, 2.0, 0.5, -0.5, 8.0]], np.float32)
    cells, scale = explorer.heatmaps(weight, [(0, 4), (4, 2)], [2, 1])
    assert scale.tolist() == [8.0]
    assert cells.tolist() == [[round(-4 / 8 * 127), round(2 / 8 * 127), 127]]


def test_component_summary_names_the_examples_each_component_moves_most_each_way_and_counts_them_all():
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(50, 7)).astype(np.float32)
    summary = explorer.component_summary(weight, 3)
    for c in range(7):
        assert summary.up[c].tolist() == np.argsort(-weight[:, c])[:3].tolist()
        assert summary.down[c].tolist() == np.argsort(weight[:, c])[:3].tolist()
        assert summary.up_value[c].tolist() == weight[summary.up[c], c].tolist()
    assert summary.counts.sum(axis=1).tolist() == [50] * 7
    np.testing.assert_allclose(summary.mean, weight.mean(axis=0), rtol=1e-5)


def test_per_example_held_out_points_fit_their_budget_at_fifty_thousand_examples():
    assert explorer.heldout_points(360, 100) == 100
    assert explorer.heldout_points(50_000, 100) * 8 * 50_000 <= max(explorer.HELDOUT_BYTES,
                                                                    explorer.HELDOUT_MIN_POINTS * 8 * 50_000)


# ----------------------------------------------------------------------------- the tiny run's page


@pytest.fixture(scope="module")
def tiny_page(tiny_run) -> Path:
    """The page the workflow wrote for the tiny run (it is in the default target)."""
    page = tiny_run / RUN / explorer.PAGE
    assert page.exists(), "the workflow's default target did not write explorer.html"
    return page


def test_the_page_is_one_file_whose_own_text_names_no_external_url(tiny_page):
    html = tiny_page.read_text()
    library = (explorer.ASSETS / explorer.PLOTLY).read_text()
    assert html.count(library) == 1, "plotly.js is inlined once, as vendored"
    own = html.replace(library, "")
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", own, re.I), re.search(r"(https?:)?//\S+", own)
    assert not re.search(r"<(script|img|link|iframe)[^>]*\s(src|href)=", own, re.I)
    assert not (tiny_page.parent / explorer.THUMBS).exists(), "a small run's thumbnails stay inline"


def test_the_page_holds_every_examples_top_components_and_each_methods_correlations(tiny_run, tiny_page):
    data = page_json(tiny_page)
    run = Run(tiny_run / RUN)
    attributions = read_attributions(run.attributions, run.expect)
    assert data["ids"] == run.example_ids and data["n_components"] == run.n_components
    k = data["top"]["k"]
    strongest = decoded(data["top"]["index"], "i4").reshape(-1, k)[:, 0]
    assert strongest.tolist() == np.abs(attributions.weight).argmax(axis=1).tolist()
    comparison = json.loads(run.comparison.read_text())
    assert data["correlations"]["methods"] == comparison["methods"]
    for method in comparison["methods"]:
        for alpha in comparison["alphas"]:
            expected = [np.nan if v is None else v for v in comparison["by_method"][method][alpha]["correlations"]]
            np.testing.assert_allclose(decoded(data["correlations"]["per_example"][method][alpha], "f4"), expected, rtol=1e-6)
    points = data["heldout"]["points"]
    masks, outputs = next(iter_chunks(run.heldout(data["alpha"]), points))
    np.testing.assert_allclose(decoded(data["heldout"]["true"], "f4").reshape(-1, points), outputs.T)
    np.testing.assert_allclose(decoded(data["heldout"]["predicted"], "f4").reshape(-1, points),
                               predict(attributions.weight, attributions.bias, masks).T, rtol=1e-5, atol=1e-5)
    assert len(data["thumbs"]["inline"]) == run.n_examples and data["labels"] is not None
    made = {edit.name for edit in (tiny_run / RUN / "edits").iterdir()}
    assert made and set(data["edits"]) == made, "the tiny config's edits are made before the page"
    assert all(set(shown) == {"plan", "report"} for shown in data["edits"].values())


def copy_run(tiny_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny_run / RUN, run, ignore=shutil.ignore_patterns("shards", "dataset.h5", "baselines", explorer.PAGE))
    return run


def test_edit_plans_and_reports_are_shown_as_they_are_when_a_run_has_them(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    (run / "edits" / "forget_class").mkdir(parents=True)
    report = {"target": "class 3", "curve": [{"k": 1, "accuracy": 0.5}, {"k": 2, "accuracy": float("nan")}]}
    (run / "edits" / "forget_class" / "report.json").write_text(json.dumps(report))
    data = page_json(explorer.build(run))
    assert data["edits"]["forget_class"] == {"report": {"target": "class 3", "curve": [{"k": 1, "accuracy": 0.5},
                                                                                      {"k": 2, "accuracy": None}]}}
    assert set(data["edits"]) == {"forget_class"} | {edit.name for edit in (tiny_run / RUN / "edits").iterdir()}


def test_attributions_of_another_model_are_refused_naming_the_file(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    info = json.loads((run / "prepare.json").read_text())
    info["model_fingerprint"] = "0" * 64
    (run / "prepare.json").write_text(json.dumps(info))
    with pytest.raises(FormatError, match="attributions.h5"):
        explorer.build(run)
    assert not (run / explorer.PAGE).exists()


def test_held_out_outputs_of_another_output_function_are_refused_naming_the_file(tiny_run, tmp_path):
    import h5py

    run = copy_run(tiny_run, tmp_path)
    heldout = Run(run).heldout(TINY["alpha"])
    with h5py.File(heldout, "r+") as f:
        f.attrs["output_fn"] = "logit"
    with pytest.raises(FormatError, match=heldout.name):
        explorer.build(run)


def test_coar_explore_builds_a_missing_page_and_says_where_it_is_without_a_display(tiny_run, tmp_path, monkeypatch, capsys):
    from coar.cli import main

    run = copy_run(tiny_run, tmp_path)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr("webbrowser.open", lambda url: pytest.fail(f"opened {url} without a display"))
    assert main(["explore", str(run)]) == 0
    assert str(run / explorer.PAGE) in capsys.readouterr().out
    assert (run / explorer.PAGE).exists()


# ----------------------------------------------------------------------------- in a real browser


@pytest.mark.skipif(browser_problem() is not None, reason=str(browser_problem()))
def test_in_chromium_search_an_example_open_it_click_its_top_component_and_go_back(tiny_run, tiny_page):
    run = Run(tiny_run / RUN)
    attributions = read_attributions(run.attributions, run.expect)
    example = 5
    example_id = run.example_ids[example]
    module, unit, _ = attributions.components[int(np.abs(attributions.weight[example]).argmax())]
    with headless_chromium() as driver:
        open_page(driver, tiny_page)
        box = driver.find_element("id", "example-search")
        box.send_keys(example_id)
        links = wait_for(driver, f"[...document.querySelectorAll('#examples-table a.example-link')]"
                                 f".filter(a => a.textContent === {json.dumps(example_id)})")
        links[0].click()
        assert wait_for(driver, "document.getElementById('example-title')?.textContent") == f"Example {example_id}"
        top = driver.find_element("css selector", "#top-components a.component-link")
        assert top.text == f"{module}:{unit}"
        top.click()
        assert wait_for(driver, "document.getElementById('component-title')?.textContent") == f"Component {module}:{unit}"
        assert driver.find_elements("css selector", "#moves-up a.example-link")
        driver.back()
        assert wait_for(driver, "document.getElementById('example-title')?.textContent") == f"Example {example_id}"
        driver.back()
        wait_for(driver, "document.getElementById('examples-table')")
        for view in ("#methods", "#edits"):
            driver.execute_script(f"location.hash = {json.dumps(view)}")
            wait_for(driver, f"document.body.dataset.view === {json.dumps(view[1:])}")
        assert severe_console_entries(driver) == []
        fetched = [url for url in requested_urls(driver) if not url.startswith(("file:", "data:"))]
        assert fetched == [], f"the page asked for {fetched}"
