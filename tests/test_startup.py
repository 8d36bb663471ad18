"""Refused at start-up, or at prepare before anything is saved: values the schema lets through,
runs that cannot fit the machine, unreadable files; and one default per shared option."""

import inspect
import pickle
import shlex
import shutil

import h5py

import pytest
import torch
import yaml
from torch import nn

from snakemake.utils import validate

from coar import baselines, constants, h5format, steps
from coar.cli import _parser
from coar.edit import steps as edit_steps
from coar.config import ConfigError, check_config
from coar.forward import run_masked
from coar.h5format import FormatError
from coar.resources import PYTHON_MIB, RunShape, check_prepared_run
from coar.run import Run
from coar.task import Task

from tests.snakemake_runs import REPO, TEST_CONFIG, snakemake

SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())["properties"]
CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
TASK = "tests.tasks_for_tests:task"
TASK_OF_RUN = {"task_spec": TASK, "task_params": {"n": 6}}
"""The config's task of the `run_dir` fixture, as the steps that reopen it take it."""


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    steps.prepare(TASK, {"n": 6}, ["linear"], ["*"], [], run)
    return run


# ----------------------------------------------------------------------------- one default per option


def command_defaults(option: str) -> dict[str, object]:
    """{command: default} of `option` in every `coar` subcommand that has it."""
    commands = next(a for a in _parser()._actions if a.dest == "command").choices
    return {name: action.default for name, sub in commands.items() for action in sub._actions
            if option in action.option_strings}


@pytest.mark.parametrize("key, option, default, commands", [
    ("max_batch", "--max-batch", constants.DEFAULT_MAX_BATCH,
     {"prepare", "collect", "baseline", "edit-plan", "edit-apply"}),
    ("masks_per_pass", "--masks-per-pass", constants.DEFAULT_MASKS_PER_PASS,
     {"prepare", "collect", "baseline", "edit-apply"}),
])
def test_a_batching_option_has_one_default_in_the_schema_the_config_every_command_and_function(key, option, default,
                                                                                               commands):
    assert SCHEMA[key]["default"] == CONFIG[key] == default
    assert set(command_defaults(option)) == commands
    assert set(command_defaults(option).values()) == {default}
    for function in (run_masked, baselines.attribute, baselines.leave_one_out, edit_steps.apply):
        assert inspect.signature(function).parameters[key].default == default, function.__name__


@pytest.mark.parametrize("section, key, option", [
    (None, "device", "--device"),
    ("loader", "workers", "--loader-workers"),
    ("loader", "pin_memory", "--loader-pin-memory"),
    ("loader", "cache_mb", "--loader-cache-mb"),
])
def test_other_options_shared_by_commands_have_the_schema_default_in_every_command(section, key, option):
    schema = SCHEMA[section]["properties"] if section else SCHEMA
    defaults = command_defaults(option)
    assert len(defaults) >= 2 and set(defaults.values()) == {schema[key]["default"]}, defaults


def test_every_command_that_reads_max_batch_accepts_auto_and_refuses_nonsense():
    for command in ("prepare", "collect", "baseline"):
        sub = next(a for a in _parser()._actions if a.dest == "command").choices[command]
        action = next(a for a in sub._actions if "--max-batch" in a.option_strings)
        assert action.type("auto") == "auto" and action.type("96") == 96
        for bad in ("0", "1.0", "big"):
            with pytest.raises(Exception, match="positive whole number or 'auto'"):
                action.type(bad)


def test_the_fit_command_refuses_an_infinite_or_nan_memory_budget():
    for bad in ("inf", "nan", "-1"):
        with pytest.raises(SystemExit):
            _parser().parse_args(["fit", "--run-dir", "r", "--data", "d", "--out", "o", "--memory-budget", bad])
    assert _parser().parse_args(["fit", "--run-dir", "r", "--data", "d", "--out", "o",
                                 "--memory-budget", "1.5"]).memory_budget == 1.5


def test_a_baseline_runs_with_max_batch_auto(run_dir):
    result = steps.baseline(run_dir, run_dir / "loo.h5", **TASK_OF_RUN, method="loo", ablation="weight", output_fn=None,
                            masks_per_pass=4, max_batch="auto", n_steps=4, device="cpu")
    assert result["method"] == "loo" and (run_dir / "loo.h5").exists()


def test_nonfinite_is_no_longer_an_option_since_collect_always_refuses_non_finite_outputs():
    assert "nonfinite" not in SCHEMA
    assert not command_defaults("--nonfinite")
    assert "nonfinite" not in inspect.signature(steps.collect).parameters


# ----------------------------------------------------------------------------- refused at start-up


def config_with(**changes) -> dict:
    """The default config with `changes` (dotted keys reach into sections), after the schema."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for key, value in changes.items():
        *sections, name = key.split("__")
        node = config
        for section in sections:
            node = node.setdefault(section, {})
        node[name] = value
    validate(config, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    return config


@pytest.mark.parametrize("changes, message", [
    ({"alpha": float("nan")}, r"config key 'alpha': nan is not a finite number"),
    ({"max_batch": 1.0}, r"config key 'max_batch': 1.0 must be a whole number"),
    ({"solver__memory_budget": float("inf")}, r"config key 'solver.memory_budget': inf is not a finite number"),
    ({"solver__example_block": 2.0}, r"config key 'solver.example_block': 2.0 must be a whole number"),
    ({"loader__cache_mb": float("inf")}, r"config key 'loader.cache_mb': inf is not a finite number"),
    ({"evaluation__alphas": [0.1, float("nan")]}, r"config key 'evaluation.alphas\[1\]': nan is not a finite"),
    ({"edits": [{"name": "forget_3", "target": {"label": 3}, "reference": {"rest": True}, "direction": "lower",
                 "tolerance": float("inf")}]},
     r"config key 'edits\[0\].tolerance': inf is not a finite number"),
    ({"masks": 10**14, "shards": 400}, r"config key 'masks': a collection job needs about 3.75e\+03 GB of memory but this "
                                r"machine has .* GB .*use smaller shards"),
    ({"evaluation__heldout_masks": 10**13}, r"config key 'evaluation.heldout_masks': a collection job needs about "
                                            r".* GB of memory .*use fewer held-out masks per alpha"),
    ({"masks": 10**10, "shards": None, "shard_masks": 1000}, r"config key 'shard_masks': 10000000000 masks make "
                                                             r"10000000 collection jobs.*at least 1000000 masks per job"),
    ({"masks": 10**6, "shards": 10**5}, r"config key 'shards': 1000000 masks make 100000 collection jobs"),
])
def test_check_config_refuses_non_finite_and_absurd_values_naming_the_key(changes, message):
    config = config_with(**changes)  # the schema lets each of these through: check_config must refuse it
    with pytest.raises(ConfigError, match=message):
        check_config(config)


@pytest.mark.parametrize("changes, key", [({"masks": 10**9, "shards": 10**4}, "masks"),
                                          ({"evaluation__heldout_masks": 5 * 10**7}, "evaluation.heldout_masks")])
def test_a_run_larger_than_the_free_disk_is_refused_naming_the_key_that_makes_it_large(changes, key, monkeypatch):
    free = shutil.disk_usage("/")._replace(free=5 * 10**8)  # the memory these runs need is well below 3 GB
    monkeypatch.setattr("coar.resources.shutil.disk_usage", lambda path: free)
    with pytest.raises(ConfigError, match=rf"config key '{key}': the run's results need about .* GB of disk but "
                                          rf".* has 0.5 GB free; use fewer .*config key '{key}'"):
        check_config(config_with(**changes))


def test_the_start_up_size_check_counts_every_shard_and_held_out_row():
    config = config_with(masks=1000, shards=4, evaluation__heldout_masks=100)  # shards of 250 rows
    needs = RunShape.of_config(config).needs(n_examples=10, n_components=6)
    row = 6 + 4 * 10
    attributions = 5 * 4 * 10 * 7  # COAR and four baselines
    assert needs.disk_bytes == (1000 + 250 + 3 * 100) * row + attributions
    assert needs.collect_bytes == int((PYTHON_MIB + 3 * 250 * row / 2**20) * 2**20)


# ----------------------------------------------------------------------------- refused at prepare


class BatchSizeDependent(nn.Module):
    """A classifier whose forward changes once a pass holds more than 16 rows."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(x)
        return out * 1.5 if len(x) > 16 else out


def batch_size_dependent(params: dict) -> Task:
    """Task function: 12 random examples for a BatchSizeDependent model."""
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = BatchSizeDependent()
    return Task(model=model, inputs=torch.randn(12, 4, generator=generator),
                labels=torch.randint(0, 3, (12,), generator=generator))


def test_prepare_refuses_a_model_whose_outputs_change_above_16_rows_per_pass_before_saving(tmp_path):
    spec = "tests.test_startup:batch_size_dependent"
    with pytest.raises(ValueError, match=r"outputs change with the rows of a forward pass: a pass of 96 rows "
                                         r"\(8 masks x 12 examples.*max_batch 512\)"):
        steps.prepare(spec, {}, ["linear"], ["*"], [], tmp_path / "run")
    assert not (tmp_path / "run").exists()
    steps.prepare(spec, {}, ["linear"], ["*"], [], tmp_path / "run", masks_per_pass=1, max_batch=16)  # 16 rows: exact


def test_a_prepared_run_that_cannot_fit_memory_at_its_real_sizes_is_refused_before_collection(tmp_path):
    shape = RunShape(masks=10**9, shard_rows=10**8, heldout_masks=100, alphas=3, attribution_files=5)
    assert shape.needs().collect_bytes < 4 * 10**9 < 10**12 < shape.needs(n_examples=5000, n_components=11).collect_bytes
    steps.prepare(TASK, {"n": 5000}, ["linear"], ["*"], [], tmp_path / "run")
    with pytest.raises(ValueError, match=r"run 'run' \(5000 examples, 11 components\): a collection job needs about "
                                         r"6.*e\+03 GB of memory"):
        check_prepared_run(tmp_path / "run", shape)


# ----------------------------------------------------------------------------- the workflow under max_batch: auto


@pytest.mark.slow
def test_every_job_of_the_default_target_parses_its_options_under_max_batch_auto(tmp_path):
    """The whole default target runs under `--config max_batch=auto` (checked by hand: 18 of 18
    steps); here, cheaply, every job's command line is one the `coar` parser accepts."""
    result = snakemake(tmp_path, "--dry-run", "--printshellcmds", "--config", "max_batch=auto", config=TEST_CONFIG)
    assert result.returncode == 0, result.stderr[-3000:]
    commands = [line.split("Shell command: ", 1)[1] for line in result.stdout.splitlines() if "Shell command: coar " in line]
    assert {shlex.split(c)[1] for c in commands} >= {"prepare", "collect", "merge", "fit", "baseline", "evaluate"}
    for command in commands:
        words = shlex.split(command.split(" 2>&1 ")[0])
        args = _parser().parse_args(words[1:])
        if args.command in ("prepare", "collect", "baseline"):
            assert args.max_batch == "auto", command


# ----------------------------------------------------------------------------- unreadable files named


class LongerThanItsItems(torch.utils.data.Dataset):
    """A Dataset whose __len__ (40) exceeds the 33 items __getitem__ can read."""

    def __len__(self) -> int:
        return 40

    def __getitem__(self, i: int):
        if i >= 33:
            raise IndexError(i)
        return torch.full((4,), float(i)), 0


def longer_than_its_items(params: dict) -> Task:
    """Task function: a TinyNet-like model on LongerThanItsItems."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    return Task(model=model, examples=LongerThanItsItems())


def test_prepare_names_a_dataset_whose_length_exceeds_its_items(tmp_path):
    with pytest.raises(ValueError, match=r"Dataset says it has 40 examples \(__len__\) but reading them failed with "
                                         r"IndexError: 33; make __len__ the number of items"):
        steps.prepare("tests.test_startup:longer_than_its_items", {}, ["linear"], ["*"], [], tmp_path / "run")


@pytest.mark.parametrize("name", ["components.json", "prepare.json"])
def test_pickle_bytes_in_a_run_file_are_refused_naming_the_file_and_what_to_do(run_dir, name):
    (run_dir / name).write_bytes(pickle.dumps({"groups": []}))
    with pytest.raises(ValueError, match=rf"{name}.*(rerun|prepare)"):
        Run(run_dir).components


def test_a_shard_with_an_attribute_coar_never_writes_is_refused_naming_it(run_dir):
    shard = run_dir / "shard.h5"
    steps.collect(run_dir, shard, **TASK_OF_RUN, shard=0, shards=1, masks=20, alpha=0.1, seed=0, ablation="weight", output_fn=None,
                  masks_per_pass=4, max_batch=64, device="cpu")
    with h5py.File(shard, "a") as f:
        f.attrs.create("note", data=b"a\0b", dtype=h5py.string_dtype("ascii", 3))
    with pytest.raises(FormatError, match=r"shard.h5 has attributes coar never writes \[.note=.*\].*delete it"):
        h5format.read_shard_meta(shard)
    with pytest.raises(FormatError, match="attributes coar never writes"):
        steps.merge(run_dir, [shard], run_dir / "dataset.h5", 20)
    assert not (run_dir / "dataset.h5").exists()


def with_labels(params: dict) -> Task:
    """Task function: 30 examples for a 3-class classifier, labels from `params` ("range": one
    label 5 at position 20; "shape": labels of shape (30, 2))."""
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    labels = torch.randint(0, 3, (30,), generator=generator)
    if params["labels"] == "range":
        labels[20] = 5
    elif params["labels"] == "shape":
        labels = torch.zeros(30, 2, dtype=torch.long)
    return Task(model=model, inputs=torch.randn(30, 4, generator=generator), labels=labels)


@pytest.mark.parametrize("labels, message", [
    ("range", r"labels of examples \['0', '1', '2', '3', '4'\] ... \(positions 0..29\) do not fit the model's output "
              r"of shape \(1, 3\) under output function 'margin': .*out of bounds"),
    ("shape", r"labels of examples .* under output function 'margin': margin expects logits \(B, C\) and labels \(B,\)"),
])
def test_prepare_refuses_labels_of_the_wrong_shape_or_out_of_range_before_saving(tmp_path, labels, message):
    with pytest.raises(ValueError, match=message):
        steps.prepare("tests.test_startup:with_labels", {"labels": labels}, ["linear"], ["*"], [], tmp_path / "run")
    assert not (tmp_path / "run").exists()
    steps.prepare("tests.test_startup:with_labels", {"labels": "good"}, ["linear"], ["*"], [], tmp_path / "run")
