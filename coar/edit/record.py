"""What an edit's folder (results/<run>/edits/<name>/) holds, and how a reader trusts it.

`report.json` names the SHA-256 digest of every other file edit_apply wrote (the edited weights,
`ablated.json`, the plot). Snakemake reruns a step on changed inputs or code, not on changed
outputs, so a file altered after the step (a flipped bit, a copy from another run) is caught
by the readers instead: the explorer, `coar show --edit` and `coar.open(run).edit(name)` read
an edit only through `read_report`, which refuses it naming the file and the fix.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from coar.digest import file_digest
from coar.h5format import FormatError, check_expected

PLAN_FORMAT = "coar-edit-plan/2"
REPORT_FORMAT = "coar-edit-report/2"
PLAN, WEIGHTS, ABLATED, REPORT, PLOT = "plan.json", "weights.safetensors", "ablated.json", "report.json", "metric_vs_k.png"
RERUN = "rerun its apply step (snakemake ... --forcerun edit_apply)"


def read_json_file(path: str | Path, what: str, fix: str) -> dict:
    """A JSON object from `path`; refused naming the file, what it should be and `fix`."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise FormatError(f"{path} cannot be read as {what} ({error}); {fix}") from None
    if not isinstance(value, dict):
        raise FormatError(f"{path} is not {what} (not a JSON object); {fix}")
    return value


def read_report(folder: str | Path, fingerprints: Mapping | None = None) -> dict:
    """An edit's report.json, with every file it names checked against its SHA-256 digest.

    Refused (FormatError naming the file) when the report is not a current edit report, was
    made for another run than the one whose `fingerprints` (coar.run.Run.fingerprints: model,
    components, examples) are given, or a file it names is missing or altered. A run folder
    copied under another name keeps its edits: the fingerprints, not the name, say which run.
    """
    folder = Path(folder)
    path = folder / REPORT
    report = read_json_file(path, f"a {REPORT_FORMAT} file", RERUN)
    if report.get("format") != REPORT_FORMAT:
        raise FormatError(f"{path} is a {report.get('format')!r} file, not {REPORT_FORMAT!r}; {RERUN}")
    check_expected(path, report, fingerprints or {})
    files = report.get("files")
    if not isinstance(files, dict) or not files:
        raise FormatError(f"{path} names no digests of the edit's files; {RERUN}")
    for name, digest in files.items():
        if Path(name).name != name:
            raise FormatError(f"{path} names the file {name!r} outside its folder; {RERUN}")
        target = folder / name
        if not target.is_file():
            raise FormatError(f"{target} is missing (report.json records its SHA-256); {RERUN}")
        if file_digest(target) != digest:
            raise FormatError(f"{target} is not the file report.json describes (its SHA-256 differs: altered or "
                              f"replaced after the edit was made); {RERUN}")
    return report


def edit_folders(run_dir: str | Path) -> list[Path]:
    """The run's edit folders that hold a report, by name."""
    return sorted(p.parent for p in Path(run_dir).glob(f"edits/*/{REPORT}"))
