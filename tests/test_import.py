"""`import coar` finds the package from any folder, including one that holds a clone named coar
(whose root folder, with no __init__.py, Python would otherwise take as a namespace package)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_coar_works_from_a_folder_that_holds_a_clone_named_coar(tmp_path):
    (tmp_path / "coar").symlink_to(REPO, target_is_directory=True)
    result = subprocess.run([sys.executable, "-c", "import coar; coar.open; print(coar.__file__)"], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == REPO / "coar" / "__init__.py"
