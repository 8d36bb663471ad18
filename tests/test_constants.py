"""One source for every set of allowed values (coar/constants.py): the schema's enums, the
command line's choices and the implementing modules all agree with it, and reading it (or
`coar --help`) never imports torch."""

import subprocess
import sys
import typing

import pytest
import yaml

from coar import constants
from coar.cli import _parser
from coar.config import SCHEMA


def enums(node, path=""):
    """{path: enum values} for every enum in a schema node; paths as in `schema_enum_sources`."""
    found = {}
    if isinstance(node, dict):
        if "enum" in node:
            found[path] = tuple(node["enum"])
        for key, value in node.items():
            if key != "enum":
                found.update(enums(value, f"{path}/{key}" if path else key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found.update(enums(value, f"{path}/{i}"))
    return found


KINDS_PATH = "properties/components/properties/kinds"
SCHEMA_ENUM_SOURCES = {
    "properties/ablation": constants.ABLATION_MODES,
    f"{KINDS_PATH}/oneOf/0": tuple(constants.KIND_PRESETS),
    f"{KINDS_PATH}/oneOf/1/items": constants.COMPONENT_KINDS,
    "properties/solver/properties/method": constants.SOLVER_METHODS,
    "properties/solver/properties/backend": constants.SOLVER_BACKENDS,
    "properties/solver/properties/memory_budget/oneOf/0": ("auto",),  # or a number of GB
    "properties/evaluation/properties/baselines/items": constants.BASELINE_METHODS,
    "properties/surrogate/properties/kind/oneOf/1": constants.SURROGATE_KINDS,  # or null: none
    "properties/device": constants.DEVICES,
    "properties/precision": constants.PRECISIONS,
    "properties/max_batch/oneOf/1": ("auto",),  # or a number of rows
    "properties/masks/oneOf/1": ("auto",),  # or a number of masks
    "properties/components/properties/unreachable": constants.UNREACHABLE_POLICIES,
    "$defs/edit_spec/properties/direction": constants.EDIT_DIRECTIONS,
    "$defs/edit_spec/properties/k/oneOf/1": ("auto",),  # or a number of components
    "$defs/edit_spec/properties/selection": constants.EDIT_SELECTIONS,
}


def test_every_schema_enum_is_a_set_of_values_from_coar_constants():
    schema = yaml.safe_load(SCHEMA.read_text())
    assert enums(schema) == SCHEMA_ENUM_SOURCES


def test_schema_defaults_that_list_every_value_list_them_in_the_constants_order():
    properties = yaml.safe_load(SCHEMA.read_text())["properties"]
    assert tuple(properties["evaluation"]["properties"]["baselines"]["default"]) == constants.BASELINE_METHODS


def choices(command: str) -> dict:
    """{option: choices} of one `coar` subcommand."""
    sub = next(a for a in _parser()._actions if a.dest == "command").choices[command]
    return {a.option_strings[0]: tuple(a.choices) for a in sub._actions if a.choices}


OPTION_SOURCES = {
    "--ablation": constants.ABLATION_MODES,
    "--device": constants.DEVICES,
    "--precision": constants.PRECISIONS,
    "--backend": constants.SOLVER_BACKENDS,
    "--method": constants.SOLVER_METHODS,
    "--purpose": ("train", "heldout"),
    "--unreachable": constants.UNREACHABLE_POLICIES,
    "--format": constants.EXPORT_FORMATS,
    "--kind": constants.SURROGATE_KINDS,
}


def test_command_line_choices_are_the_constants():
    commands = next(a for a in _parser()._actions if a.dest == "command").choices
    seen = set()
    for command in commands:
        for option, values in choices(command).items():
            expected = constants.BASELINE_METHODS if (command, option) == ("baseline", "--method") else OPTION_SOURCES[option]
            assert values == expected, f"coar {command} {option}"
            seen.add(option)
    assert seen == set(OPTION_SOURCES)


def test_the_implementing_modules_use_the_constants():
    from coar import ablation, baselines, components, outputs, report
    from coar.solver import backend, estimators

    assert ablation.MODES is constants.ABLATION_MODES
    assert typing.get_args(ablation.Mode) == constants.ABLATION_MODES
    assert baselines.METHODS is constants.BASELINE_METHODS
    assert components.KINDS is constants.COMPONENT_KINDS and components.KIND_PRESETS is constants.KIND_PRESETS
    assert typing.get_args(estimators.Method) == constants.SOLVER_METHODS
    assert typing.get_args(backend.BackendName) == constants.SOLVER_BACKENDS
    assert tuple(outputs.OUTPUT_FUNCTIONS) == constants.OUTPUT_FUNCTION_NAMES
    assert report.FigurePaths._fields == constants.REPORT_FIGURES


@pytest.mark.parametrize("module", ["coar.constants", "coar.cli", "coar.config", "coar.spec"])
def test_the_command_line_and_the_config_checks_import_without_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_coar_help_lists_the_subcommands_without_importing_torch():
    code = ("import sys, coar.cli\ntry:\n    coar.cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch imported' if 'torch' in sys.modules else 'no torch')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "collect" in result.stdout and result.stdout.strip().endswith("no torch")
