"""The attribution explorer (coar/explorer.py): what the page holds, that it is one self-contained
file that fetches nothing, that changed or unreadable inputs are refused naming the file, and in
headless Chromium: a click-through (examples -> one example -> its top component -> back, with no
console error), the components named and layered as the command line and the Python API name them,
one colour per method in every plot, and module names as categories whatever they look like."""

import json
import os
import re
import shutil
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest

import coar
from coar import explorer
from coar.cli import main
from coar.components import ComponentGroup, ComponentSet
from coar.evaluate import predict
from coar.h5format import FormatError, iter_chunks, read_attributions
from coar.run import Run
from coar.task import Task
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


def rebuilt_labels(groups: list[dict], full: dict) -> tuple[list[str], list[int]]:
    """The names and layers the page's script makes of component_labels' output (explorer.js
    componentName and componentLayer)."""
    if full:
        return full["names"], full["layers"]
    return ([f"{g['name']}[{u}]" for g in groups for u in range(g["size"])],
            [g["layer"] for g in groups for _ in range(g["size"])])


def test_the_page_names_and_layers_components_as_the_api_does_in_a_few_bytes_per_module():
    two_kinds = ComponentSet([ComponentGroup("attn", "head", 2, 0), ComponentGroup("attn", "linear", 3, 2),
                              ComponentGroup("fc", "linear", 2, 5)])
    groups, full = explorer.component_labels(two_kinds)
    assert full == {} and [g["name"] for g in groups] == ["attn:head", "attn:linear", "fc"]
    assert rebuilt_labels(groups, full) == (two_kinds.names(), two_kinds.layers())
    assert two_kinds.layers() == [0, 0, 0, 0, 0, 1, 1], "a layer is a module's position, whatever its kinds"
    starts = np.cumsum([0] + RESNET50_CONV_FILTERS)
    resnet = ComponentSet([ComponentGroup(f"layer{j // 12}.{j % 12 // 3}.conv{j % 3 + 1}", "conv", size, int(start))
                           for j, (size, start) in enumerate(zip(RESNET50_CONV_FILTERS, starts))])
    groups, full = explorer.component_labels(resnet)
    assert full == {} and rebuilt_labels(groups, full) == (resnet.names(), resnet.layers())
    assert len(json.dumps(groups)) < 8_000, "22,720 names and layers in a few KB, not one string each"


def test_names_of_another_form_go_into_the_page_whole(monkeypatch):
    components = ComponentSet([ComponentGroup("fc", "linear", 2, 0)])
    monkeypatch.setattr(ComponentSet, "names", lambda self: ["first", "second"])
    groups, full = explorer.component_labels(components)
    assert full == {"names": ["first", "second"], "layers": [0, 0]}
    assert rebuilt_labels(groups, full) == (["first", "second"], [0, 0])


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
    assert all(set(shown) == {"report", "ablated", "plan"} for shown in data["edits"].values())


def copy_run(tiny_run: Path, tmp_path: Path) -> Path:
    """A copy of the tiny run under its own name (an edit's report names the run it was made for)."""
    run = tmp_path / TINY["run"]
    shutil.copytree(tiny_run / RUN, run, ignore=shutil.ignore_patterns("shards", "dataset.h5", "baselines", explorer.PAGE))
    return run


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


def test_coar_explore_on_examples_that_are_not_safetensors_names_the_file_and_what_to_do(tiny_run, tmp_path, capsys):
    run = copy_run(tiny_run, tmp_path)
    (run / "examples.safetensors").write_bytes(b"\xff" * 64)  # a header length no file holds
    assert main(["explore", str(run), "--no-open"]) == 1
    error = capsys.readouterr().err
    assert f"{run / 'examples.safetensors'} is not a readable safetensors file of examples" in error
    assert "header too large" in error and "rerun the prepare step (or restore the file)" in error
    assert not (run / explorer.PAGE).exists()


def test_coar_explore_builds_a_missing_page_and_says_where_it_is_without_a_display(tiny_run, tmp_path, monkeypatch, capsys):
    from coar.cli import main

    run = copy_run(tiny_run, tmp_path)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr("webbrowser.open", lambda url: pytest.fail(f"opened {url} without a display"))
    assert main(["explore", str(run)]) == 0
    assert str(run / explorer.PAGE) in capsys.readouterr().out
    assert (run / explorer.PAGE).exists()


def test_coar_explore_rebuilds_a_page_older_than_the_runs_files(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    page = run / explorer.PAGE
    explorer.explore(run, open_browser=False)
    now = page.stat().st_mtime
    set_time = lambda path, t: os.utime(path, (now + t, now + t))  # noqa: E731
    for path in run.rglob("*"):
        set_time(path, -1000)  # the run made long ago, the page since
    set_time(page, -100)
    set_time(run / "logs" / "fit.log", -50)  # not read by the page: kept
    explorer.explore(run, open_browser=False)
    assert page.stat().st_mtime == now - 100
    report = next(run.glob("edits/*/report.json"))
    set_time(report, -50)  # an edit made again since: built again
    assert explorer.changed_since(run, page) == [report]
    explorer.explore(run, open_browser=False)
    assert page.stat().st_mtime >= now and explorer.changed_since(run, page) == []


# ----------------------------------------------------------------------------- in a real browser


@pytest.mark.skipif(browser_problem() is not None, reason=str(browser_problem()))
def test_in_chromium_search_an_example_open_it_click_its_top_component_and_go_back(tiny_run, tiny_page):
    run = Run(tiny_run / RUN)
    attributions = read_attributions(run.attributions, run.expect)
    example = 5
    example_id = run.example_ids[example]
    name = run.components.names()[int(np.abs(attributions.weight[example]).argmax())]
    with headless_chromium() as driver:
        open_page(driver, tiny_page)
        box = driver.find_element("id", "example-search")
        box.send_keys(example_id)
        links = wait_for(driver, f"[...document.querySelectorAll('#examples-table a.example-link')]"
                                 f".filter(a => a.textContent === {json.dumps(example_id)})")
        links[0].click()
        assert wait_for(driver, "document.getElementById('example-title')?.textContent") == f"Example {example_id}"
        top = driver.find_element("css selector", "#top-components a.component-link")
        assert top.text == name
        top.click()
        assert wait_for(driver, "document.getElementById('component-title')?.textContent") == f"Component {name}"
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


def run_js(driver, hash_: str, ready: str) -> None:
    """Go to `hash_` (its argument URI-encoded, as the page's links are) and wait until `ready` holds."""
    view, _, argument = hash_.partition("/")
    driver.execute_script(f"location.hash = {json.dumps(view)} + ({json.dumps(argument)} ? '/' + "
                          f"encodeURIComponent({json.dumps(argument)}) : '')")
    wait_for(driver, ready)


@pytest.mark.skipif(browser_problem() is not None, reason=str(browser_problem()))
def test_in_chromium_the_name_coar_show_prints_is_the_pages_name_link_and_address_of_that_component(tiny_run, tiny_page):
    from coar.show import show

    result = coar.open(tiny_run / RUN)
    first = result.example_ids[0]
    top = result.top(first, 1)[0]
    assert top.component in show(tiny_run / RUN, example=first), "what `coar show --example` prints"
    modules = len({c.module for c in result.components})
    with headless_chromium() as driver:
        open_page(driver, tiny_page)
        run_js(driver, f"#example/{first}", "document.getElementById('example-title')")
        assert top.component in driver.execute_script("return document.body.innerText;")
        row = driver.execute_script("return [...document.querySelectorAll('#top-components tr')[1].cells].map(c => c.textContent);")
        assert row[1:4] == [top.component, str(top.layer), top.kind]
        link = driver.find_element("css selector", "#top-components a.component-link").get_attribute("href")
        assert link.endswith("#component/" + quote(top.component, safe=""))
        run_js(driver, f"#component/{top.component}", "document.getElementById('component-title')")
        assert driver.find_element("id", "component-title").text == f"Component {top.component}"
        assert driver.find_element("id", "component-layer").text == f"{top.layer} (0 nearest the input) of {modules} modules"
        # the name pasted into the header's box (spaces and all) opens the same page
        run_js(driver, "#examples", "document.getElementById('examples-table')")
        driver.find_element("id", "component-search").send_keys(f" {top.component} \n")
        assert wait_for(driver, "document.getElementById('component-title')?.textContent") == f"Component {top.component}"
        # an address of older pages (module:unit) is not found, and the page names the component it meant
        run_js(driver, f"#component/{top.module}:{top.unit}", "document.getElementById('similar-components')")
        assert driver.find_element("css selector", "#similar-components a.component-link").text == top.component
        assert severe_console_entries(driver) == []


def trace_colours(driver, selector: str) -> list[dict]:
    """Per plot matching `selector`: trace name -> the colour plotly drew it in (its full data: a box's
    line, other traces' markers)."""
    return driver.execute_script(f"""
        return [...document.querySelectorAll({json.dumps(selector)})].map(node => Object.fromEntries(
            node._fullData.filter(t => t.name !== 'y = x').map(t => [t.name, (t.type === 'box' ? t.line : t.marker).color])));""")


@pytest.mark.skipif(browser_problem() is not None, reason=str(browser_problem()))
def test_in_chromium_each_method_has_one_colour_in_every_plot_and_coar_against_each_has_its_diagonal(tiny_run, tiny_page):
    methods = json.loads(Run(tiny_run / RUN).comparison.read_text())["methods"]
    with headless_chromium() as driver:
        open_page(driver, tiny_page)
        plots = trace_colours(driver, ".correlation-histogram")
        run_js(driver, "#methods", "document.querySelector('.methods-scatter .main-svg')")
        plots += trace_colours(driver, ".box-plot") + trace_colours(driver, ".methods-scatter")
        swatches = driver.execute_script("return Object.fromEntries([...document.querySelectorAll('#methods-table .method')]"
                                         ".map(m => [m.dataset.method, getComputedStyle(m.firstChild).backgroundColor]));")
        diagonal, points = driver.execute_script("""
            const data = document.querySelector('.methods-scatter').data;
            return [data.find(t => t.name === 'y = x'), data.filter(t => t.name !== 'y = x').flatMap(t => [...t.x, ...t.y])];""")
        run_js(driver, f"#example/{Run(tiny_run / RUN).example_ids[0]}", "document.querySelector('.heldout-plot .main-svg')")
        plots += trace_colours(driver, ".heldout-plot")
        assert severe_console_entries(driver) == []
    assert len(plots) == 1 + 3 + 1 + 1 and set(plots[0]) == set(methods) and set(plots[4]) == set(methods[1:])
    colour = {m: plots[0][m] for m in methods}
    assert len(set(colour.values())) == len(methods), "one colour each"
    for plot in plots[1:5]:
        assert {m: colour[m] for m in plot} == plot, "the same colour in every plot"
    assert plots[5] == {"held-out mask": colour["coar"]}, "COAR's predictions on an example's masks in COAR's colour"
    rgb = {m: "rgb({}, {}, {})".format(*(int(c[i:i + 2], 16) for i in (1, 3, 5))) for m, c in colour.items()}
    assert swatches == rgb, "the methods table's swatches are the plots' colours"
    finite = [v for v in points if v is not None]
    assert diagonal["x"] == diagonal["y"] and diagonal["x"][0] <= min(finite) and diagonal["x"][1] >= max(finite)


# ----------------------------------------------------------------------------- an nn.Sequential's run

SEQUENTIAL = "tests.test_explorer:sequential"


def sequential(params: dict) -> Task:
    """An nn.Sequential MLP, whose modules are named "0", "2" and "4", on 24 random examples."""
    import torch
    from torch import nn

    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    return Task(model=model, inputs=torch.randn(24, 4, generator=generator), labels=torch.arange(24) % 3)


@pytest.fixture(scope="module")
def sequential_page(tmp_path_factory) -> Path:
    """The page of a run of `sequential` (prepare, collect, merge, fit: no evaluation, no baselines)."""
    from coar import steps

    run = tmp_path_factory.mktemp("sequential") / "mlp"
    steps.prepare(SEQUENTIAL, {}, "linear", ["*"], [], run)
    assert main(["collect", "--run-dir", str(run), "--out", str(run / "shard.h5"), "--masks", "60", "--alpha", "0.2",
                 "--task", SEQUENTIAL, "--task-params", "{}", "--device", "cpu"]) == 0
    assert main(["merge", "--run-dir", str(run), "--masks", "60", "--out", str(run / "dataset.h5"), str(run / "shard.h5")]) == 0
    assert main(["fit", "--run-dir", str(run), "--data", str(run / "dataset.h5"), "--out", str(run / "attributions.h5")]) == 0
    return explorer.build(run)


def test_an_nn_sequentials_modules_keep_their_names_in_the_page(sequential_page):
    groups = page_json(sequential_page)["groups"]
    assert [(g["name"], g["layer"]) for g in groups] == [("0", 0), ("2", 1), ("4", 2)]


@pytest.mark.skipif(browser_problem() is not None, reason=str(browser_problem()))
def test_in_chromium_an_nn_sequentials_heatmap_rows_are_its_module_names(sequential_page):
    first = page_json(sequential_page)["ids"][0]
    with headless_chromium() as driver:
        open_page(driver, sequential_page)
        run_js(driver, f"#example/{first}", "document.querySelector('.heatmap-plot .ytick')")
        axis = driver.execute_script("""
            const node = document.querySelector('.heatmap-plot');
            return {type: node._fullLayout.yaxis.type,
                    ticks: [...node.querySelectorAll('.ytick text')].sort((a, b) => a.getBoundingClientRect().top -
                                                                               b.getBoundingClientRect().top).map(t => t.textContent)};""")
        # top to bottom, layer 0 first; a numeric axis would run from -1 to 5 with double-height rows
        assert axis == {"type": "category", "ticks": ["0", "2", "4"]}
        names = driver.execute_script("return [...document.querySelectorAll('#top-components a.component-link')].map(a => a.text);")
        assert names and all(re.fullmatch(r"[024]\[[0-9]+\]", name) for name in names), names
        assert severe_console_entries(driver) == []
