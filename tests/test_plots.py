"""Figures of a run: drawn and saved as PNG without touching global matplotlib state, so a
user's notebook keeps its backend and its pyplot figures."""

import subprocess
import sys

DRAW_IN_A_NOTEBOOK_LIKE_SESSION = """
import sys
import matplotlib
matplotlib.use("svg")  # any backend a user picked, other than Agg
import matplotlib.pyplot as plt
mine = plt.figure()  # a figure of the user's own
import coar.plots
coar.plots.correlation_histogram({"0.05": {"correlations": [0.1, 0.9, None], "mean_correlation": 0.5}}, sys.argv[1])
coar.plots.step_timings({"prepare": 1.5, "collect": 3.0}, sys.argv[2])
print(matplotlib.get_backend(), plt.get_fignums() == [mine.number])
"""


def test_drawing_figures_leaves_the_backend_and_pyplot_figures_as_they_were(tmp_path):
    paths = [tmp_path / "histogram.png", tmp_path / "timings.png"]
    result = subprocess.run([sys.executable, "-c", DRAW_IN_A_NOTEBOOK_LIKE_SESSION, *map(str, paths)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["svg", "True"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
