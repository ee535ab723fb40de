"""Hunyuan3D-2.1 DiT: loading the full-size ``.ckpt`` without a second copy in host RAM.

Writes a full-size random ``model.fp16.ckpt`` in the release's layout (benchmarks/h21_random_weights.py:
``{"model", "vae", "conditioner"}``, float16, 7.37 GB, of which the DiT's 752 tensors are 6.1 GB)
unless ``--ckpt`` names one; the file is deleted afterwards. Then, in a fresh process, it loads the DiT
with ``load_dit`` (``torch.load`` with ``weights_only`` and ``mmap``, strict keys) and prints the time and the host RSS the load added;
then it reads every tensor once (a float32 copy, summed), handing the tensor's file pages back
afterwards as the memory manager does after copying, and prints the peak RSS above the start.

Run: python benchmarks/h21_load.py [--dir DIR] [--ckpt FILE]
(writing the file takes about a minute and little memory; loading and reading it, next to none)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

GB = 1e9


def measure(path: Path) -> dict:
    import torch

    from backend.memory.stats import HostPeak, current_rss
    from backend.pipelines.hunyuan3d_v2_1 import load_dit

    start_rss = current_rss()
    start = time.perf_counter()
    model = load_dit(path)
    load_seconds = time.perf_counter() - start
    loaded_rss = current_rss()
    mapping = model.file_mappings[0]
    total = 0.0
    start = time.perf_counter()
    with HostPeak() as peak, torch.inference_mode():
        for parameter in model.parameters():
            total += parameter.float().sum().item()
            mapping.release(parameter)
    return {
        "file_bytes": path.stat().st_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "load_seconds": round(load_seconds, 2),
        "rss_added_by_load_bytes": loaded_rss - start_rss,
        "read_seconds": round(time.perf_counter() - start, 2),
        "peak_rss_above_start_while_reading_bytes": peak.peak - start_rss,
        "checksum": total,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", type=Path, help="an existing DiT checkpoint (the release's model.fp16.ckpt) instead of writing one")
    parser.add_argument("--dir", type=Path, help="where the written checkpoint goes for the run (default: the temporary folder; needs 7.4 GB)")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the fresh process's half
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return 0
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        path = args.ckpt
        if path is None:
            from h21_random_weights import write_weights

            start = time.perf_counter()
            path = write_weights(Path(folder))
            print(f"wrote {path} ({path.stat().st_size / GB:.2f} GB) in {time.perf_counter() - start:.0f} s")
        elif not path.is_file():
            parser.error(f"--ckpt {path}: no such file")
        result = subprocess.run([sys.executable, __file__, "--measure", str(path)], capture_output=True, text=True)
        if result.returncode:
            print(result.stderr, file=sys.stderr)
            return result.returncode
        figures = json.loads(result.stdout)
    print(f"machine: {os.cpu_count()} cores")
    print(f"checkpoint: {figures['file_bytes'] / GB:.2f} GB, {figures['parameters']:,} parameters")
    print(f"load_dit: {figures['load_seconds']:.2f} s, host RSS +{figures['rss_added_by_load_bytes'] / GB:.3f} GB")
    print(f"reading every tensor once, pages handed back: {figures['read_seconds']:.1f} s, "
          f"peak host RSS +{figures['peak_rss_above_start_while_reading_bytes'] / GB:.3f} GB above the start")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
