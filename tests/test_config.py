"""The configuration: config/README.md documents exactly the schema's keys with their real
defaults, and the start-up checks refuse what the schema cannot judge, naming the key."""

import copy
import re
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from coar.config import DEFAULT_RUN_KEYS, SCHEMA, ConfigError, check_config, check_surrogate_for_run, check_values

REPO = Path(__file__).resolve().parents[1]
CONFIG_DOCS = REPO / "config" / "README.md"
DEFAULT_CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
SECTION = ""  # default cell of a key that groups other keys
NO_DEFAULT = "—"  # default cell of a key with no value unless the user gives one
MISSING = object()


def schema_keys(node: dict, schema: dict, prefix: str = "") -> dict[str, dict]:
    """{dotted key: schema node} of every property, references to $defs followed."""
    keys = {}
    for name, sub in node.get("properties", {}).items():
        if "$ref" in sub:
            sub = {**schema["$defs"][sub["$ref"].removeprefix("#/$defs/")], **sub}
        keys[prefix + name] = sub
        keys.update(schema_keys(sub, schema, f"{prefix}{name}."))
    return keys


def documented_rows() -> dict[str, str]:
    """{dotted key: default cell} of config/README.md's tables."""
    rows = {}
    for key, default in re.findall(r"^\| `([^`]+)` \| (.*?) \| .+ \|$", CONFIG_DOCS.read_text(), re.M):
        assert key not in rows, f"{key} is documented twice"
        rows[key] = default.strip()
    return rows


def effective_default(key: str, node: dict):
    """What a key is when a user's config does not set it: config/config.yaml's value, else the
    schema's default (always for the default run's own keys, e.g. its `edits`)."""
    if key in DEFAULT_RUN_KEYS:
        return node.get("default", MISSING)
    value = DEFAULT_CONFIG
    for part in key.split("."):
        value = value.get(part, MISSING) if isinstance(value, dict) else MISSING
    return node.get("default", MISSING) if value is MISSING else value


def test_config_docs_document_every_schema_key_and_nothing_else():
    schema = yaml.safe_load(SCHEMA.read_text())
    assert set(documented_rows()) == set(schema_keys(schema, schema))


def test_config_docs_show_each_keys_real_default():
    schema = yaml.safe_load(SCHEMA.read_text())
    rows = documented_rows()
    for key, node in schema_keys(schema, schema).items():
        cell = rows[key]
        if "properties" in node:
            assert cell == SECTION, f"{key} groups other keys: its default cell must be empty"
        elif (default := effective_default(key, node)) is MISSING:
            assert cell == NO_DEFAULT, f"{key} has no default, the docs show {cell!r}"
        else:
            assert yaml.safe_load(cell.strip("`")) == default, f"{key}: docs show {cell}, the default is {default!r}"


def test_the_docs_test_reads_every_table_row():
    assert len(documented_rows()) > 30  # a broken row pattern would make the tests above vacuous


def config(**changes) -> dict:
    """The default config, its defaults filled in by the schema, with `changes` (not validated:
    check_config must refuse them on its own)."""
    result = copy.deepcopy(DEFAULT_CONFIG)  # the validator fills defaults into nested blocks in place
    validate(result, str(SCHEMA))
    return {**result, **changes}


@pytest.mark.parametrize("changes, message", [
    ({"task": {"spec": "no_such_module_xyz:task"}}, "'task.spec': no module 'no_such_module_xyz'"),
    ({"task": {"spec": "no_such_package_xyz.sub"}}, "'task.spec': no module 'no_such_package_xyz.sub'"),
    ({"task": {"spec": "coar.tasks.digits:"}}, "'task.spec': 'coar.tasks.digits:' is not 'package.module'"),
    ({"output_fn": "margins"}, r"'output_fn': unknown output function 'margins'; use one of \['margin', 'lm_margin'\]"),
    ({"output_fn": "no_such_module_xyz:f"}, "'output_fn': no module 'no_such_module_xyz'"),
    ({"output_fn": "coar.outputs:"}, "'output_fn': 'coar.outputs:' is not 'package.module'"),
    ({"shards": 5, "masks": 4}, "'shards': 5 shards for 4 masks"),
    ({"components": {**DEFAULT_CONFIG["components"], "preset": "llama3_heads"}},
     r"'components.preset': unknown component preset 'llama3_heads'; choose from \[.*'llama_heads'"),
])
def test_check_config_refuses_naming_the_key(changes, message):
    with pytest.raises(ConfigError, match=message):
        check_config(config(**changes))


@pytest.mark.parametrize("changes, message", [
    ({"masks": "Auto"}, r"^config key 'masks': 'Auto' is not one of \['auto'\] \(number of training masks m, or auto"),
    ({"alpha": 2}, r"^config key 'alpha': 2 is greater than or equal to the maximum of 1 \(probability that each"),
    ({"masks_auto": {"confidence": 1.5}}, r"^config key 'masks_auto.confidence': 1.5 is greater than"),
    ({"edits": [{"name": "x"}]}, r"^config key 'edits\[0\]': 'target' is a required property"),
])
def test_a_value_the_schema_refuses_is_named_in_one_line_with_what_the_key_takes(changes, message):
    with pytest.raises(ConfigError, match=message) as refused:
        check_values(config(**changes))
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("output_fn", [None, "margin", "lm_margin", "coar.outputs:margin"])
def test_check_config_accepts_the_default_run_and_every_kind_of_output_function(output_fn):
    check_config(config(output_fn=output_fn))


def test_a_surrogate_the_runs_sizes_cannot_hold_is_refused_naming_the_key_and_the_fix():
    surrogate = {"kind": "projected_quadratic", "rank": 10, "penalty": 10.0}
    check_surrogate_for_run(surrogate, 352, 10, 1000)
    check_surrogate_for_run({**surrogate, "kind": None}, 4, 4, 2)  # no surrogate: nothing to check
    with pytest.raises(ConfigError, match=r"'surrogate.rank': rank 10 exceeds .*; use surrogate.rank <= 8"):
        check_surrogate_for_run(surrogate, 352, 8, 1000)
    with pytest.raises(ConfigError, match=r"'masks': 353 masks cannot .* 352 components .*; use masks >= 354"):
        check_surrogate_for_run(surrogate, 352, 10, 353)
    with pytest.raises(ConfigError, match=r"'masks_auto.max_masks': .*; use masks_auto.max_masks >= 354"):
        check_surrogate_for_run(surrogate, 352, 10, 300, "masks_auto.max_masks")
