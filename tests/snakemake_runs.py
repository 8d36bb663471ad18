"""Running the workflow from tests: the Snakefile, the tiny CI config (.test/config/config.yaml)
and a `snakemake` call into a scratch folder."""

import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"
TEST_CONFIG = REPO / ".test" / "config" / "config.yaml"
TINY = yaml.safe_load(TEST_CONFIG.read_text())
"""The tiny run's config keys (the rest keep config/config.yaml's values)."""


def snakemake(workdir: Path, *args: str, config: dict | Path | None = None, cores: int = 2,
              **kwargs) -> subprocess.CompletedProcess:
    """Run snakemake on the workflow in `workdir`; `config` is a config file or a dict written to one.
    `args` (options and targets) come before --configfile, which would take a target for a file."""
    cmd = ["snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(workdir), "--cores", str(cores), *args]
    if isinstance(config, dict):
        path = workdir / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        config = path
    if config is not None:
        cmd += ["--configfile", str(config)]
    return subprocess.run(cmd, capture_output=True, text=True, **kwargs)


def run_tiny(workdir: Path) -> None:
    """Run the whole workflow on the tiny config in `workdir`."""
    result = snakemake(workdir, config=TEST_CONFIG)
    assert result.returncode == 0, result.stderr[-3000:]
