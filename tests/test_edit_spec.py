"""Config `edits` refused at start-up, naming the edit and the key, wherever the config alone shows the fault."""

import pytest
import yaml

from coar.config import check_config
from coar.edit.spec import EditConfigError, EditSpec, check_edits
from tests.test_config import DEFAULT_CONFIG

GOOD = {"name": "forget_3", "target": {"label": 3}, "reference": {"rest": True}, "direction": "lower"}


def test_the_default_config_has_one_valid_edit_with_defaults_applied():
    (spec,) = check_edits(DEFAULT_CONFIG["edits"])
    assert spec.k == "auto" and spec.components == ["*"] and spec.strict is False


def test_the_schema_shows_the_same_defaults_as_the_spec():
    from coar.config import SCHEMA

    properties = yaml.safe_load(SCHEMA.read_text())["$defs"]["edit_spec"]["properties"]
    spec = EditSpec.from_config(GOOD).as_dict()
    assert {k: v["default"] for k, v in properties.items() if "default" in v} == {
        k: spec[k] for k in ("k", "k_max", "tolerance", "components", "max_deviation", "strict", "selection", "goal",
                           "per_example")}


@pytest.mark.parametrize("change, message", [
    ({"colour": 1}, r"edit 'forget_3': unknown key\(s\) \['colour'\]"),
    ({"direction": "sideways"}, "edit 'forget_3', key 'direction'"),
    ({"k": 2.0}, "edit 'forget_3', key 'k'"),
    ({"k": 0}, "edit 'forget_3', key 'k'"),
    ({"tolerance": -0.1}, "edit 'forget_3', key 'tolerance'"),
    ({"target": {"colour": 3}}, "edit 'forget_3', key 'target.colour'"),
    ({"target": {"label": "3"}}, "edit 'forget_3', key 'target.label'"),
    ({"target": {"rest": True}}, "edit 'forget_3', key 'target.rest'"),
    ({"reference": {"label": 3}}, "edit 'forget_3', key 'reference': selects the same examples"),
    ({"reference": {"rest": True, "label": 2}}, "edit 'forget_3', key 'reference.rest'"),
    ({"target": {"ids": "no/such/file.txt"}}, "edit 'forget_3', key 'target.ids'"),
    ({"components": []}, "edit 'forget_3', key 'components'"),
    ({"name": "../up"}, "must be a plain name"),
])
def test_a_bad_edit_is_refused_naming_the_edit_and_the_key(change, message):
    with pytest.raises(EditConfigError, match=message):
        check_config({**DEFAULT_CONFIG, "edits": [{**GOOD, **change}]})


def test_missing_keys_and_repeated_names_are_refused():
    with pytest.raises(EditConfigError, match=r"edit 'forget_3': key\(s\) \['direction'\] must be given"):
        check_edits([{k: v for k, v in GOOD.items() if k != "direction"}])
    with pytest.raises(EditConfigError, match=r"\['forget_3'\] given more than once"):
        check_edits([GOOD, GOOD])
