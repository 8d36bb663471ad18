"""An ImageFolder task streamed from disk gives exactly the outputs of the same images as tensors."""

import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from coar import h5format, steps
from coar.run import Run
from coar.saved_task import LoaderOptions, example_ids

TASK = "coar.tasks.image_folder"
SNAKEFILE = Path(__file__).resolve().parents[1] / "workflow" / "Snakefile"


def write_images(root, n: int = 60, classes: int = 3, size: int = 64) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")


def collect(run, out, **options):
    info = Run(run).info
    steps.collect(run, out, task_spec=info["task"], task_params=info["task_params"], shard=0, shards=1, masks=12,
                  alpha=0.1, seed=0, ablation="weight", output_fn=None,
                  masks_per_pass=4, max_batch=64, device="cpu", **options)
    (masks, outputs), = h5format.iter_chunks(out, 100)
    return masks, outputs


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    write_images(root)
    return root


def test_a_streamed_image_folder_matches_the_same_images_as_tensors(images, tmp_path):
    results = {}
    for as_tensors in (False, True):
        run = tmp_path / f"tensors-{as_tensors}"
        info = steps.prepare(TASK, {"root": str(images), "as_tensors": as_tensors}, "conv", ["*"], [], run)
        assert info["examples_kind"] == ("tensors" if as_tensors else "dataset")
        results[as_tensors] = info, collect(run, run / "shard.h5")
    (streamed_info, (streamed_masks, streamed)), (tensor_info, (tensor_masks, tensors)) = results[False], results[True]
    assert streamed_info["examples_fingerprint"] == tensor_info["examples_fingerprint"]
    assert streamed.shape == (12, 60)
    assert np.array_equal(streamed_masks, tensor_masks) and np.array_equal(streamed, tensors)
    assert example_ids(tmp_path / "tensors-False", 60)[:2] == ["class0/000.png", "class0/003.png"]


def test_the_cache_and_workers_change_nothing_but_speed(images, tmp_path):
    run = tmp_path / "run"
    steps.prepare(TASK, {"root": str(images)}, "conv", ["*"], [], run)
    _, plain = collect(run, tmp_path / "plain.h5")
    _, cached = collect(run, tmp_path / "cached.h5", loader=LoaderOptions(cache_mb=64))
    _, workers = collect(run, tmp_path / "workers.h5", loader=LoaderOptions(workers=2))
    assert np.array_equal(plain, cached) and np.array_equal(plain, workers)


def test_an_image_changed_after_prepare_is_refused_before_the_shard_is_written(images, tmp_path):
    root = tmp_path / "images"
    write_images(root, n=12)
    run = tmp_path / "run"
    info = steps.prepare(TASK, {"root": str(root)}, "conv", ["*"], [], run)
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(root / "class1" / "004.png")
    with pytest.raises(RuntimeError, match=f"examples fingerprint [0-9a-f]{{64}} but prepare.json records "
                                           f"{info['examples_fingerprint']}"):
        collect(run, run / "shard.h5")
    assert not (run / "shard.h5").exists()


@pytest.mark.slow
def test_an_image_folder_task_runs_through_the_workflow(tmp_path):
    write_images(tmp_path / "images", n=24, size=16)
    config = {
        "run": "images",
        "task": {"spec": TASK, "params": {"root": str(tmp_path / "images"), "width": 2}},
        "alpha": 0.1, "masks": 60, "shards": 2, "masks_per_pass": 4,
        "evaluation": {"heldout_masks": 20, "alphas": [0.2]},
        "loader": {"workers": 1, "cache_mb": 1},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run(["snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(tmp_path), "--cores", "2",
                             "results/images/evaluation.json", "--configfile", str(tmp_path / "config.yaml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "results" / "images"
    assert Run(run).info["examples_kind"] == "dataset"
    assert not (run / "task.pt").exists()
    attributions = h5format.read_attributions(run / "attributions.h5")
    assert attributions.weight.shape == (24, 14) and attributions.example_ids[0] == "class0/000.png"
