"""Hunyuan3D-2.1 DiT: loading the full-size ``.ckpt`` without a second copy in host RAM.

Writes a full-size DiT checkpoint in the release's layout (``{"model": state dict}``, float16,
752 tensors, 6.1 GB; the values are zeros, which loading does not look at) unless ``--ckpt``
names one; the file is deleted afterwards. Then, in a fresh process, it loads it with ``load_dit`` (``torch.load`` with
``weights_only`` and ``mmap``, strict keys) and prints the time and the host RSS the load added;
then it reads every tensor once (a float32 copy, summed), handing the tensor's file pages back
afterwards as the memory manager does after copying, and prints the peak RSS above the start.

Run: python benchmarks/h21_load.py [--dir DIR] [--ckpt FILE]
(writing the file takes 6.1 GB of RAM for a minute; loading and reading it, next to none)
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GB = 1e9


def write_checkpoint(path: Path) -> None:
    import torch

    from backend.pipelines.hunyuan3d_v2_1 import HunyuanDiT21

    with torch.device("meta"):
        shapes = {key: tensor.shape for key, tensor in HunyuanDiT21().state_dict().items()}
    torch.save({"model": {key: torch.zeros(shape, dtype=torch.float16) for key, shape in shapes.items()}}, path)


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
    parser.add_argument("--dir", type=Path, help="where the written checkpoint goes for the run (default: the temporary folder; needs 6.1 GB)")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the fresh process's half
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return 0
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        path = args.ckpt
        if path is None:
            path = Path(folder) / "model.fp16.ckpt"
            start = time.perf_counter()
            write_checkpoint(path)
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
