"""benchmarks/surrogates.py on a finished run: every estimator asked for is fitted at every mask
count the run holds and scored on each held-out alpha, written as JSON and, with --plot, as curves."""

import json
import sys

from tests.benchmark_scripts import load_benchmark


def test_the_benchmark_scores_each_estimator_at_each_size_and_draws_the_curves(tiny_run, tmp_path, monkeypatch, capsys):
    run = tiny_run / "results" / "tiny"
    out, png = tmp_path / "s.json", tmp_path / "s.png"
    monkeypatch.setattr(sys, "argv", ["surrogates.py", "--run", str(run), "--json", str(out), "--plot", str(png),
                                      "--masks", "300", "400", "800", "--only", "ols", "pq-r5"])
    load_benchmark("surrogates").main()
    printed = capsys.readouterr().out
    assert "skipping sizes [800]: the run has 400 training masks" in printed
    results = json.loads(out.read_text())
    alphas = sorted(p.name[len("alpha-"):-len(".h5")] for p in (run / "heldout").glob("alpha-*.h5"))
    assert set(results) == {"ols", "pq-r5"} and all(set(by_m) == {"300", "400"} for by_m in results.values())
    assert all(sorted(by_alpha) == sorted(f"{float(a):g}" for a in alphas) for by_m in results.values()
               for by_alpha in by_m.values())
    assert all(-1 <= v <= 1 for by_m in results.values() for by_alpha in by_m.values() for v in by_alpha.values())
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
