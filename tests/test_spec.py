"""Objects named by spec strings: how tasks, output functions and config checks find code."""

import sys

import pytest

from coar.spec import import_object, module_exists, parse_spec

HELPERS = "tests.tasks_for_tests"


def test_module_function_spec_names_that_function():
    from tests.tasks_for_tests import task

    assert import_object(f"{HELPERS}:task") is task


def test_module_only_spec_names_the_default_attribute():
    from tests.tasks_for_tests import returns_a_model

    assert import_object(HELPERS, default_attr="returns_a_model") is returns_a_model


def test_spec_naming_a_missing_module_says_no_such_module():
    with pytest.raises(ImportError, match="'tests.no_such_tasks'.*no such module 'tests.no_such_tasks'"):
        import_object("tests.no_such_tasks", default_attr="task", kind="task")


def write_module(folder, name: str, source: str, monkeypatch) -> str:
    """Write an importable module ``name`` under ``folder``; return its name."""
    (folder / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(folder))
    return name


def test_module_raising_on_import_is_reported_with_the_original_exception(tmp_path, monkeypatch):
    name = write_module(tmp_path, "tasks_raising_on_import", "raise RuntimeError('boom')\n", monkeypatch)
    with pytest.raises(ImportError, match=f"'{name}:task'.*raised RuntimeError\\('boom'\\)") as caught:
        import_object(f"{name}:task")
    assert isinstance(caught.value.__cause__, RuntimeError)


def test_module_missing_a_dependency_is_not_reported_as_missing_itself(tmp_path, monkeypatch):
    name = write_module(tmp_path, "tasks_missing_dependency", "import no_such_dependency_xyz\n", monkeypatch)
    with pytest.raises(ImportError, match="raised ModuleNotFoundError.*no_such_dependency_xyz") as caught:
        import_object(name, default_attr="task")
    assert "no such module" not in str(caught.value)
    assert isinstance(caught.value.__cause__, ModuleNotFoundError)


def test_spec_naming_a_missing_function_names_spec_and_function():
    with pytest.raises(ImportError, match=f"'{HELPERS}:nope'.*has no attribute 'nope'"):
        import_object(f"{HELPERS}:nope")


def test_spec_naming_a_non_callable_is_rejected():
    with pytest.raises(TypeError, match="NOT_CALLABLE.*not callable"):
        import_object(f"{HELPERS}:NOT_CALLABLE")


@pytest.mark.parametrize("spec", ["", ":task", f"{HELPERS}:", f"{HELPERS}:a:b"])
def test_malformed_specs_are_rejected_naming_the_kind(spec):
    with pytest.raises(ValueError, match="bad task spec"):
        import_object(spec, default_attr="task", kind="task")
    with pytest.raises(ValueError, match="bad task spec"):
        parse_spec(spec, default_attr="task", kind="task")


def test_module_only_spec_without_a_default_attribute_is_malformed():
    with pytest.raises(ValueError, match="bad output function spec 'coar.outputs': expected 'package.module:function'$"):
        parse_spec("coar.outputs", kind="output function")


def test_parse_spec_splits_module_and_attribute():
    assert parse_spec("a.b:c") == ("a.b", "c")
    assert parse_spec("a.b", default_attr="task") == ("a.b", "task")


def test_module_exists_finds_modules_without_running_them(tmp_path, monkeypatch):
    name = write_module(tmp_path, "module_that_must_not_run", "raise RuntimeError('ran')\n", monkeypatch)
    assert module_exists(name) and name not in sys.modules
    assert module_exists("coar.outputs")
    assert not module_exists("coar.no_such_module")
    assert not module_exists("no_such_package_xyz.sub")
    assert not module_exists("")
