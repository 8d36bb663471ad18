"""Peak memory of a collect job over an on-disk image folder at n = 2,000 and n = 20,000 images.

A task whose examples are a Dataset (coar.tasks.image_folder: a small CNN over an ImageFolder)
is streamed through a DataLoader once per block of masks, so a collect job's memory should not
grow with the number of examples n. This benchmark writes a synthetic folder of 64x64 PNG images
(procedurally drawn, 10 class subfolders; cached under --cache-dir and reused), runs
`coar prepare` and one `coar collect` job at each n in subprocesses, and prints the peak resident
memory (ru_maxrss of each child, from os.wait4) of each and their ratio (goal: within 15%).
It then times the re-reading against the in-memory cache (config loader.cache_mb) at the small n.

    python benchmarks/bench_collect_memory.py [--cache-dir /tmp] [--masks 8] [--masks-per-pass 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

TASK = "coar.tasks.image_folder"
CLASSES = 10
SIZE = 64


def draw(index: int) -> tuple[int, np.ndarray]:
    """Image `index`: a class-coloured disc on a random smooth background (class = index % CLASSES)."""
    rng = np.random.default_rng(index)
    label = index % CLASSES
    yy, xx = np.mgrid[:SIZE, :SIZE] / SIZE
    background = (rng.uniform(0, 80, 3) + 60 * np.stack([yy, xx, 1 - yy], -1)).astype(np.float32)
    cy, cx, r = rng.uniform(0.25, 0.75, 2).tolist() + [rng.uniform(0.1, 0.25)]
    disc = ((yy - cy) ** 2 + (xx - cx) ** 2) < r**2
    colour = np.array([(label * 37) % 256, (label * 91) % 256, (label * 53) % 256], dtype=np.float32)
    image = np.where(disc[..., None], colour, background) + rng.normal(0, 8, (SIZE, SIZE, 3))
    return label, np.clip(image, 0, 255).astype(np.uint8)


def image_folder(cache_dir: Path, n: int) -> Path:
    """A folder of the first n images (written once; smaller folders hard-link the same files)."""
    root = cache_dir / f"coar-bench-images-{n}"
    done = root / ".complete"
    if done.exists():
        return root
    source = cache_dir / "coar-bench-images-all"
    for i in range(n):
        label, name = i % CLASSES, f"{i:06d}.png"
        original = source / f"class{label}" / name
        if not original.exists():
            original.parent.mkdir(parents=True, exist_ok=True)
            partial = original.with_suffix(".part")
            Image.fromarray(draw(i)[1]).save(partial, format="PNG")
            partial.rename(original)  # a killed run leaves no truncated image behind
        target = root / f"class{label}" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            os.link(original, target)
    done.touch()
    return root


def peak_rss_mib(args: list[str]) -> tuple[float, float]:
    """Run `coar ARGS` in a child process; its peak resident memory (MiB) and wall seconds."""
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "coar.cli", *args], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"coar {' '.join(args)} failed: {child.stderr.read()[-2000:]}")
    return usage.ru_maxrss / 1024, seconds


def collect_args(run: Path, out: Path, masks: int, masks_per_pass: int, *extra: str) -> list[str]:
    info = json.loads((run / "prepare.json").read_text())  # the task this benchmark prepared (its "config")
    return ["collect", "--run-dir", str(run), "--out", str(out), "--masks", str(masks), "--alpha", "0.05",
            "--task", info["task"], "--task-params", json.dumps(info["task_params"]),
            "--masks-per-pass", str(masks_per_pass), "--max-batch", "1024", "--device", "cpu", "--threads", "1", *extra]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp"), help="where the image folders are kept")
    parser.add_argument("--sizes", type=int, nargs=2, default=[2000, 20000], help="small and large n")
    parser.add_argument("--masks", type=int, default=8, help="masks of the collect job")
    parser.add_argument("--masks-per-pass", type=int, default=4, help="masks per block (each block re-reads the images)")
    parser.add_argument("--width", type=int, default=4, help="channel width of the task's CNN (small: decoding dominates)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of the cache tradeoff")
    parser.add_argument("--only", choices=["memory", "tradeoff"], default=None, help="run one part only")
    args = parser.parse_args()

    small, large = args.sizes
    work = args.cache_dir / "coar-bench-runs"
    if args.only != "tradeoff":
        memory(args, work, small, large)
    if args.only != "memory":
        tradeoff(work, small, args.masks_per_pass, args.repeats)


def memory(args: argparse.Namespace, work: Path, small: int, large: int) -> None:
    """Peak RSS of prepare and of one collect job at the small and the large n."""
    rows = {}
    for n in (small, large):
        start = time.perf_counter()
        root = image_folder(args.cache_dir, n)
        print(f"n = {n}: image folder ready in {time.perf_counter() - start:.0f} s ({root})", flush=True)
        run = work / f"n{n}"
        prepare_rss, prepare_s = peak_rss_mib(["prepare", "--run-dir", str(run), "--task", TASK, "--task-params",
                                               json.dumps({"root": str(root), "width": args.width}), "--kinds", "conv"])
        collect_rss, collect_s = peak_rss_mib(collect_args(run, run / "shard.h5", args.masks, args.masks_per_pass))
        rows[n] = (prepare_rss, prepare_s, collect_rss, collect_s)
        print(f"n = {n}: prepare peak RSS {prepare_rss:.0f} MiB ({prepare_s:.0f} s); "
              f"collect ({args.masks} masks) peak RSS {collect_rss:.0f} MiB ({collect_s:.0f} s)", flush=True)

    print()
    print("| n | prepare peak RSS (MiB) | collect peak RSS (MiB) | collect wall (s) |")
    print("|---|---|---|---|")
    for n, (p_rss, _, c_rss, c_s) in rows.items():
        print(f"| {n:,} | {p_rss:.0f} | {c_rss:.0f} | {c_s:.0f} |")
    ratio = rows[large][2] / rows[small][2]
    print(f"collect peak RSS ratio n={large:,} / n={small:,}: {ratio:.3f} (goal: within 15%, "
          f"{'met' if abs(ratio - 1) <= 0.15 else 'NOT met'})")


def tradeoff(work: Path, n: int, masks_per_pass: int, repeats: int) -> None:
    """Re-reading vs the in-memory cache: one job at n, 4 blocks of masks, runs interleaved, medians."""
    run = work / f"n{n}"
    masks = 4 * masks_per_pass
    runs = {"re-read per block": (), "cached": ("--loader-cache-mb", "4096")}
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, extra in runs.items():
            results[name].append(peak_rss_mib(collect_args(run, run / "tradeoff.h5", masks, masks_per_pass, *extra)))
    medians = {name: np.median(np.array(r), axis=0) for name, r in results.items()}
    from coar.task import load_task

    task = load_task(TASK, json.loads((run / "prepare.json").read_text())["task_params"])
    passes = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _batch in task.example_source().batches(256):
            pass
        passes.append(time.perf_counter() - start)
    print(f"\none pass reading all {n:,} images (what the cache saves per block after the first): "
          f"{np.median(passes):.1f} s (median of {repeats})")
    print(f"n = {n:,}, {masks} masks in 4 blocks, medians of {repeats} interleaved runs:")
    for name, (rss, seconds) in medians.items():
        print(f"  {name}: {seconds:.0f} s, peak RSS {rss:.0f} MiB")
    (rss0, s0), (rss1, s1) = medians.values()
    print(f"  cached / re-read: time {s1 / s0:.2f}, memory {rss1 / rss0:.2f}")


if __name__ == "__main__":
    main()
