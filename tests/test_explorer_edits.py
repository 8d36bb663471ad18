"""The explorer's Edits view (coar/explorer.py _edits, explorer.js viewEdits): each applied edit
opens with its answer (direction, chosen k and the rule that chose it, selection, checks), then
shows why: labelled before -> after accuracies, the curves over k with the chosen k marked,
predicted vs realised change per example around y = x, the components it ablated linking to their
pages, the candidates tried, and the raw plan.json and report.json in a closed fold. Reports are
read only through coar.edit.record.read_report: a file altered after the edit refuses the page.

The edits are fixtures (`write_edit`) injected into a copy of the tiny run, whose own edits are
removed, so the view is tested on every field the report may hold, absent ones included."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from coar import explorer
from coar.edit import record
from coar.h5format import FormatError
from coar.run import Run
from tests.browser import browser_problem, headless_chromium, open_page, severe_console_entries, wait_for
from tests.test_explorer import RUN, copy_run, page_json

CHOSEN = (86, 40, 56)  # component indices of the tiny run the fixture edit ablates, in order
TRIED = ((86, True, "raises target success 0.21 -> 0.32"), (12, False, "reference accuracy loss 0.062 > tolerance 0.05"),
         (40, True, "raises target success 0.32 -> 0.53"), (56, True, "raises target success 0.53 -> 0.89"))
KS = list(range(9))
K = 3


def spec(name: str, **changes) -> dict:
    """An edit's config entry with its defaults, as report.json records it."""
    return {"name": name, "target": {"label": 3}, "reference": {"rest": True}, "direction": "lower", "k": "auto",
            "k_max": KS[-1], "tolerance": 0.05, "components": ["*"], "max_deviation": 0.5, "strict": False,
            "selection": "verified", "goal": None, "per_example": False, **changes}


def metrics(n: int, accuracy: tuple[float, float]) -> dict:
    return {"n": n, "mean_output": [1.0, -0.5], "accuracy": list(accuracy)}


def sweep_report(run: Run, name: str) -> dict:
    """A report of an edit choosing k = K over KS on validation: curves, metrics, per-example changes, candidates tried."""
    ks = np.array(KS, float)
    roles = ["target" if i % 10 == 0 else "reference" if i % 10 < 8 else "other" for i in range(run.n_examples)]
    predicted = [-0.6 * (i % 7) if role == "target" else 0.01 * (i % 5) for i, role in enumerate(roles)]
    components = run.components
    return {
        "edit": spec(name), "k": K, "rule": "best target metric within the reference tolerance", "selection": "verified",
        "checks": {"reference_accuracy_loss": 0.012, "tolerance": 0.05, "predicted_target_change": -1.8,
                   "realised_target_change": -1.5, "realised_over_predicted": 0.83, "max_deviation": 0.5, "passed": True},
        "problems": [],
        "sweep": {"ks": KS, "validation_target_success": (0.2 + 0.1 * ks).tolist(),
                  "validation_reference_accuracy": (0.93 - 0.02 * ks).tolist(),
                  "realised_mean_change": {"target": (-0.5 * ks).tolist(), "reference": (-0.01 * ks).tolist()},
                  "predicted_mean_change": {"target": (-0.6 * ks).tolist(), "reference": (0.005 * ks).tolist()}},
        "metrics": {"target": metrics(18, (0.94, 0.17)), "reference": metrics(162, (0.96, 0.95)),
                    "reported": metrics(180, (0.96, 0.87)), "validation_target": metrics(19, (0.89, 0.11)),
                    "validation_reference": metrics(161, (0.93, 0.91)), "validation": metrics(180, (0.92, 0.83))},
        "predicted_vs_realised": {
            "correlation": 0.93, "realised_over_predicted": {"target": 0.83, "reference": 1.2},
            "accuracy": {"target": {"before": 0.94, "predicted": 0.06, "surrogate_predicted": 0.2, "realised": 0.17},
                         "reference": {"before": 0.96, "predicted": 0.96, "surrogate_predicted": 0.94,
                                       "realised": 0.95}},
            "examples": [{"id": i, "role": role, "predicted": p, "realised": 0.8 * p}
                         for i, role, p in zip(run.example_ids, roles, predicted)]},
        "tried": [{"index": c, "module": components.locate(c)[0], "unit": components.locate(c)[1], "accepted": ok, "reason": why}
                  for c, ok, why in TRIED],
    }


def per_example_report(run: Run, name: str) -> dict:
    """A per-example edit's report: one edit per target example, no sweep, no weights."""
    ids = run.example_ids[:3]
    return {
        "edit": spec(name, direction="raise", target={"misclassified": True}, per_example=True), "k": None,
        "rule": "each target example: the smallest k that moves it within the tolerance (k = 0: none did)",
        "selection": "verified", "checks": {"tolerance": 0.05, "max_reference_loss": 0.03, "passed": True}, "problems": [],
        "sweep": None, "tried": None, "metrics": {"target": metrics(3, (0.0, 0.67))},
        "per_example": {"n": 3, "fixed": 2, "fraction_fixed": 2 / 3, "median_reference_loss": 0.01,
                        "median_test_reference_loss": 0.02, "examples": [
            {"id": ids[0], "k": 2, "fixed": True, "output": [-0.8, 0.4], "reference_accuracy": [0.95, 0.94]},
            {"id": ids[1], "k": 5, "fixed": True, "output": [-0.2, 1.1], "reference_accuracy": [0.95, 0.95]},
            {"id": ids[2], "k": 8, "fixed": False, "output": [-2.5, -0.9], "reference_accuracy": [0.95, 0.92]}]},
    }


def bare_report(name: str) -> dict:
    """A report with nothing past the edit and its k: every other field absent or null."""
    return {"edit": {"name": name, "direction": "raise", "per_example": False}, "k": 1, "sweep": None, "metrics": None,
            "predicted_vs_realised": None}


def write_edit(run_dir: Path, report: dict) -> Path:
    """edits/<name>/ as the apply step writes it: plan.json, a fake plot, ablated.json (the chosen
    components; per example, each example's set) and fake weights (not per example), and a
    coar-edit-report/2 report.json carrying the run's fingerprints, whose "files" hold the SHA-256 of the files
    beside it."""
    run = Run(run_dir)
    name = report["edit"]["name"]
    folder = run_dir / "edits" / name
    folder.mkdir(parents=True)
    (folder / record.PLAN).write_text(json.dumps({"format": record.PLAN_FORMAT, "edit": report["edit"], "run": run.name,
                                                  "ks": KS, "ranked": [{"index": c, "score": -1.0} for c in CHOSEN]}))
    (folder / record.PLOT).write_bytes(b"\x89PNG fake plot")
    rows = []
    for score, c in enumerate(CHOSEN):
        module, unit, kind = run.components.locate(c)
        rows.append({"index": c, "module": module, "unit": unit, "kind": kind, "score": -10.0 + score})
    if report["edit"]["per_example"]:
        sets = {e["id"]: rows[: e["k"]] for e in report["per_example"]["examples"]}
        (folder / record.ABLATED).write_text(json.dumps({"edit": name, "per_example": sets}))
    else:
        (folder / record.WEIGHTS).write_bytes(bytes(range(256)) * 16)
        (folder / record.ABLATED).write_text(json.dumps({"edit": name, "ablated": rows[:K],
                                                         "by_layer": {r["module"]: 1 for r in rows[:K]}}))
    files = {p.name: record.file_digest(p) for p in sorted(folder.iterdir()) if p.name != record.PLAN}
    full = {"format": record.REPORT_FORMAT, "run": run.name, **run.fingerprints, **report, "files": files}
    (folder / record.REPORT).write_text(json.dumps(full))
    return folder


@pytest.fixture
def bare_run(tiny_run, tmp_path) -> Path:
    """A copy of the tiny run without its own edits."""
    run = copy_run(tiny_run, tmp_path)
    shutil.rmtree(run / "edits", ignore_errors=True)
    return run


# ----------------------------------------------------------------------------- what the page holds


def test_the_page_holds_each_applied_edits_report_ablated_components_and_plan_and_leaves_out_unapplied_ones(bare_run):
    run = Run(bare_run)
    report = sweep_report(run, "forget_3")
    report["predicted_vs_realised"]["correlation"] = float("nan")  # undefined: null in the page's strict JSON
    write_edit(bare_run, report)
    write_edit(bare_run, per_example_report(run, "fix_each"))
    (bare_run / "edits" / "planned_only").mkdir()
    (bare_run / "edits" / "planned_only" / record.PLAN).write_text("{}")
    edits = page_json(explorer.build(bare_run))["edits"]
    assert sorted(edits) == ["fix_each", "forget_3"]
    forget = edits["forget_3"]
    assert forget["report"]["k"] == K and forget["report"]["tried"][1]["accepted"] is False
    assert [a["index"] for a in forget["ablated"]["ablated"]] == list(CHOSEN[:K])
    assert forget["plan"]["format"] == record.PLAN_FORMAT
    assert forget["report"]["predicted_vs_realised"]["correlation"] is None
    assert edits["fix_each"]["report"]["per_example"]["fixed"] == 2
    assert set(edits["fix_each"]["ablated"]["per_example"]) == set(run.example_ids[:3])


def test_a_large_runs_predicted_vs_realised_examples_are_thinned_evenly_saying_how_many_there_are(bare_run, monkeypatch):
    run = Run(bare_run)
    write_edit(bare_run, sweep_report(run, "forget_3"))
    monkeypatch.setattr(explorer, "EDIT_POINTS", 50)
    pairs = page_json(explorer.build(bare_run))["edits"]["forget_3"]["report"]["predicted_vs_realised"]
    ids = [e["id"] for e in pairs["examples"]]
    assert len(ids) == 50 and pairs["n_examples"] == run.n_examples
    assert ids[0] == run.example_ids[0] and ids[-1] == run.example_ids[-1]


def test_a_flipped_bit_in_an_edits_weights_refuses_the_page_naming_the_file(bare_run):
    folder = write_edit(bare_run, sweep_report(Run(bare_run), "forget_3"))
    weights = bytearray((folder / record.WEIGHTS).read_bytes())
    weights[100] ^= 1
    (folder / record.WEIGHTS).write_bytes(weights)
    with pytest.raises(FormatError, match=f"{folder / record.WEIGHTS}.*SHA-256 differs"):
        explorer.build(bare_run)
    assert not (bare_run / explorer.PAGE).exists()


def test_a_report_without_digests_is_refused_saying_to_rerun_the_edit_not_shown_unchecked(bare_run):
    folder = write_edit(bare_run, sweep_report(Run(bare_run), "forget_3"))
    old = json.loads((folder / record.REPORT).read_text())
    old.pop("files")
    old["format"] = "coar-edit-report/1"
    (folder / record.REPORT).write_text(json.dumps(old))
    with pytest.raises(FormatError, match="report.json.*coar-edit-report/1.*edit_apply"):
        explorer.build(bare_run)


# ----------------------------------------------------------------------------- in a real browser

browser = pytest.mark.skipif(browser_problem() is not None, reason=str(browser_problem()))


@pytest.fixture(scope="module")
def edits_page(tiny_run, tmp_path_factory) -> Path:
    """The page of a copy of the tiny run with a swept edit (forget_3), a per-example one (fix_each) and
    one whose report holds little (sparse)."""
    run_dir = copy_run(tiny_run, tmp_path_factory.mktemp("edits"))
    shutil.rmtree(run_dir / "edits", ignore_errors=True)
    run = Run(run_dir)
    write_edit(run_dir, sweep_report(run, "forget_3"))
    write_edit(run_dir, per_example_report(run, "fix_each"))
    write_edit(run_dir, bare_report("sparse"))
    return explorer.build(run_dir)


@pytest.fixture(scope="module")
def chromium(edits_page):
    """One headless Chromium on the edits page for the module's browser tests."""
    with headless_chromium(1280, 900) as driver:
        open_page(driver, edits_page)
        yield driver


@pytest.fixture
def edits_view(chromium):
    """The Edits view drawn afresh, scrolled to the top; no browser-console error by the end of the test."""
    chromium.execute_script("location.hash = '#edits'; route();")
    wait_for(chromium, "document.body.dataset.view === 'edits' && document.querySelector('#edit-forget_3 .js-plotly-plot')")
    yield chromium
    assert severe_console_entries(chromium) == []


def plot_of(driver, section: str, cls: str) -> dict:
    """The traces, shapes and drawn text of the plot of class `cls` in the edit `section`, and how far below
    the section's top it starts (px)."""
    return driver.execute_script(f"""
        const node = document.querySelector('#edit-{section} .{cls}');
        return node && {{traces: node.data.map(t => ({{name: t.name, x: Array.from(t.x), y: Array.from(t.y)}})),
                         shapes: (node.layout.shapes || []).map(s => ({{x0: s.x0, y0: s.y0}})),
                         drawn: node.querySelector('.main-svg') ? node.textContent : '',
                         below: node.getBoundingClientRect().top - node.closest('section').getBoundingClientRect().top}};""")


@browser
def test_in_chromium_an_edit_opens_with_its_direction_chosen_k_rule_selection_and_checks(edits_view):
    headline = edits_view.execute_script("""
        const h = document.querySelector('#edit-forget_3 .edit-headline');
        return {text: h.textContent, below: h.getBoundingClientRect().top - h.parentNode.getBoundingClientRect().top,
                first: document.querySelector('.edit-headline').getBoundingClientRect().top};""")
    assert headline["text"] == ("lower the target output · k = 3 (best target metric within the reference tolerance)"
                                " · selection: verified · checks passed")
    assert headline["below"] < 60, "each edit's answer comes first, under its name"
    assert headline["first"] < 200, "the first edit's answer is at the top of the view"


@browser
def test_in_chromium_before_and_after_accuracies_are_labelled_bars_in_view_without_scrolling(edits_view):
    bars = plot_of(edits_view, "forget_3", "accuracy-plot")
    assert [t["name"] for t in bars["traces"]] == ["before", "after, predicted", "after, surrogate", "after"]
    assert bars["traces"][0]["x"] == ["target, test<br>n = 18", "reference, test<br>n = 162",
                                      "target, validation<br>n = 19", "reference, validation<br>n = 161"]
    assert bars["traces"][0]["y"] == [0.94, 0.96, 0.89, 0.93] and bars["traces"][3]["y"] == [0.17, 0.95, 0.11, 0.91]
    # what the attributions and the surrogate predicted, on the run's (test) examples only
    assert bars["traces"][1]["y"] == [0.06, 0.96, None, None] and bars["traces"][2]["y"] == [0.2, 0.94, None, None]
    for label in ("target, test", "n = 18", "reference, validation", "0.17", "0.06", "after, predicted", "after, surrogate"):
        assert label in bars["drawn"]
    assert bars["below"] < 200, "the accuracies come right after the edit's headline"


@browser
def test_in_chromium_the_curves_over_k_are_drawn_with_the_chosen_k_marked(edits_view):
    change = plot_of(edits_view, "forget_3", "change-plot")
    assert [t["name"] for t in change["traces"]] == ["target, predicted", "target, realised",
                                                     "reference, predicted", "reference, realised"]
    assert all(t["x"] == KS for t in change["traces"])
    assert change["shapes"][0]["x0"] == K and "k = 3" in change["drawn"]
    validation = plot_of(edits_view, "forget_3", "validation-plot")
    assert [t["name"] for t in validation["traces"]] == ["target success", "reference accuracy"]
    assert validation["shapes"][0]["x0"] == K
    assert validation["shapes"][1]["y0"] == pytest.approx(0.93 - 0.05), "the reference tolerance is drawn"


@browser
def test_in_chromium_predicted_vs_realised_per_example_is_drawn_by_role_around_the_diagonal(edits_view):
    scatter = plot_of(edits_view, "forget_3", "predicted-plot")
    names = [t["name"] for t in scatter["traces"]]
    assert names == ["other (36)", "reference (126)", "target (18)", "y = x"]
    diagonal = scatter["traces"][-1]
    assert diagonal["x"] == diagonal["y"]
    assert "correlation 0.930" in scatter["drawn"] and "target 0.83, reference 1.20" in scatter["drawn"]


@browser
def test_in_chromium_a_chosen_component_links_to_its_page(tiny_run, edits_view):
    name = Run(tiny_run / RUN).components.names()[CHOSEN[0]]  # the one name of the command line and the API
    links = edits_view.find_elements("css selector", "#edit-forget_3 .edit-components a.component-link")
    assert [a.text for a in links][0] == name and len(links) == K
    links[0].click()
    assert wait_for(edits_view, "document.getElementById('component-title')?.textContent") == f"Component {name}"


@browser
def test_in_chromium_the_candidates_tried_are_in_a_closed_fold_with_each_reason(edits_view):
    fold = edits_view.find_element("css selector", "#edit-forget_3 details.tried")
    assert fold.get_attribute("open") is None
    assert fold.find_element("css selector", "summary").text == "Candidates tried: 4 (3 accepted, 1 skipped)"
    fold.find_element("css selector", "summary").click()
    rows = [r.text for r in fold.find_elements("css selector", "tr")[1:]]
    assert "skipped reference accuracy loss 0.062 > tolerance 0.05" in rows[1]


@browser
def test_in_chromium_the_raw_files_are_in_a_closed_fold_and_the_view_stays_short(edits_view):
    fold = edits_view.find_element("css selector", "#edit-forget_3 details.raw")
    assert fold.get_attribute("open") is None and not fold.find_elements("css selector", "table")
    height = edits_view.execute_script("return document.documentElement.scrollHeight;")
    assert height < 3500, f"three edits take {height} px"
    fold.find_element("css selector", "summary").click()
    assert wait_for(edits_view, "[...document.querySelectorAll('#edit-forget_3 details.raw h4')].map(h => h.textContent)") == \
        ["plan.json", "report.json"]


@browser
def test_in_chromium_a_per_example_edit_shows_how_many_it_fixed_and_each_examples_output_and_components(tiny_run, edits_view):
    summary = edits_view.find_element("css selector", "#edit-fix_each .edit-summary").text
    assert summary == "fixed 2 of 3 (67%) · median reference accuracy loss 0.010 (validation, test 0.020)"
    headline = edits_view.find_element("css selector", "#edit-fix_each .edit-headline").text
    assert headline.startswith("raise the target output · k = 2–8 (each target example: the smallest k")
    assert not edits_view.find_elements("css selector", "#edit-fix_each .change-plot"), "no sweep, no curves"
    outputs = plot_of(edits_view, "fix_each", "per-example-plot")
    assert [t["name"] for t in outputs["traces"]] == ["fixed (2)", "not fixed (1)"]
    rows = [r.text for r in edits_view.find_elements("css selector", "#edit-fix_each .per-example-table tr")[1:]]
    run = Run(tiny_run / RUN)
    chosen = ", ".join(run.components.names()[c] for c in CHOSEN)  # its set: the fixture's first k
    assert len(rows) == 3 and rows[2] == f"{run.example_ids[2]} 8 not fixed -2.500 → -0.900 0.950 → 0.920 {chosen}"
    assert len(edits_view.find_elements("css selector", "#edit-fix_each .per-example-table a.component-link")) == 2 + 3 + 3


@browser
def test_in_chromium_a_report_holding_little_shows_what_it_has_and_draws_nothing_it_lacks(edits_view):
    headline = edits_view.find_element("css selector", "#edit-sparse .edit-headline").text
    assert headline == "raise the target output · k = 1"
    assert not edits_view.find_elements("css selector", "#edit-sparse .js-plotly-plot")
    assert edits_view.find_elements("css selector", "#edit-sparse details.raw")


@browser
def test_in_chromium_absent_fields_never_show_as_null_undefined_or_nan(edits_view):
    text = edits_view.execute_script("return document.getElementById('view').innerText;")
    for word in ("null", "undefined", "NaN", "[object Object]"):
        assert word not in text
