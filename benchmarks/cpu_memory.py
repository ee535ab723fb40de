"""Peak host memory of the memory modes on the CPU, on Hunyuan3D-1 std at its released sizes.

Writes a ``mvd_std/`` folder and ``svrm/svrm.safetensors`` in the official layout with random
float16 weights: the real component classes (an SDXL-sized ``UNet2DConditionModel``, the SD
``AutoencoderKL``, CLIP ViT-L/14 and ViT-bigG/14 vision towers with projections, our SVRM at the
official sizes) are built on ``meta`` for their tensor names and shapes, and each tensor is
written straight to its file, so writing never holds a model in RAM. Each mode then runs in a
fresh process through the real registration and loading path (the std pipeline's
``register_components`` and ``register_svrm``) and executes std's six stages in order:
``condition`` (VAE + both vision encoders), ``multiview`` (UNet), ``decode`` (VAE), ``encode``,
``triplane`` and ``mesh`` (SVRM), each on small inputs, since the weights are what is measured.
The triplane stage makes the transformer ready but skips its 12,288-token forward pass, which
takes many minutes on a few CPU cores; it hands the synthesizer a random triplane of the real
shape instead.

Printed: each component's file size and float32 execution size, then per mode the peak RSS
(kernel high-water mark, reset per stage), time and per-stage peaks; the goal (``stage`` peak
<= largest stage's float32 weights + 1 GB); and every stage's output compared element-wise
(max abs diff) between modes.

    nice python benchmarks/cpu_memory.py --dir /tmp/hy3d-std   # ~10.5 GB on disk, ~12 GB RAM
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GB = 1e9
_SAFETENSORS_DTYPES = {"float16": "F16", "float32": "F32", "int64": "I64"}

# Public architectures of the released parts (tensor shapes only; the values here are random).
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
SD_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512,
)
CLIP_L14 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, patch_size=14,
                image_size=224, projection_dim=768, hidden_act="quick_gelu")
CLIP_BIGG14 = dict(hidden_size=1664, intermediate_size=8192, num_hidden_layers=48, num_attention_heads=16, patch_size=14,
                   image_size=224, projection_dim=1280, hidden_act="gelu")
STAGES = (
    ("condition", ("mvd_std.vae", "mvd_std.vision_encoder", "mvd_std.vision_encoder_2")),
    ("multiview", ("mvd_std.unet",)),
    ("decode", ("mvd_std.vae",)),
    ("encode", ("svrm.encoder",)),
    ("triplane", ("svrm.triplane",)),
    ("mesh", ("svrm.synthesizer",)),
)


def write_safetensors(path: Path, shapes: dict, seed: int) -> None:
    """A safetensors file of random float16 tensors (integer buffers as zeros), one tensor in RAM at a time."""
    import torch

    header, offset = {}, 0
    for name, (shape, dtype) in shapes.items():
        size = int(torch.Size(shape).numel()) * getattr(torch, dtype).itemsize
        header[name] = {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    generator = torch.Generator().manual_seed(seed)
    partial = path.with_suffix(".partial")
    with open(partial, "wb") as f:
        f.write(len(encoded).to_bytes(8, "little"))
        f.write(encoded)
        for shape, dtype in shapes.values():
            if dtype == "int64":
                tensor = torch.zeros(shape, dtype=torch.int64)
            else:
                tensor = (torch.randn(shape, generator=generator) * 0.02).to(getattr(torch, dtype))
            f.write(tensor.numpy().tobytes())
    partial.replace(path)


def tensor_shapes(module, dtype: str = "float16") -> dict:
    import torch

    return {name: (tuple(t.shape), "int64" if t.dtype == torch.int64 else dtype) for name, t in module.state_dict().items()}


def write_std_weights(root: Path) -> None:
    import diffusers
    import transformers

    from backend.memory.loading import parameters_on_meta
    from backend.pipelines.hunyuan3d_v1.svrm import SVRM

    parts = [
        ("unet", lambda: diffusers.UNet2DConditionModel(**SDXL_UNET), "diffusion_pytorch_model"),
        ("vae", lambda: diffusers.AutoencoderKL(**SD_VAE), "diffusion_pytorch_model"),
        ("vision_encoder", lambda: transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**CLIP_L14)), "model"),
        ("vision_encoder_2", lambda: transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**CLIP_BIGG14)), "model"),
    ]
    for seed, (part, build, stem) in enumerate(parts):
        folder = root / "mvd_std" / part
        path = folder / f"{stem}.safetensors"
        if path.is_file():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        with parameters_on_meta():
            model = build()
        if stem == "model":
            model.config.save_pretrained(str(folder))
        else:
            model.save_config(str(folder))
        print(f"  writing mvd_std/{part} ...", flush=True)
        write_safetensors(path, tensor_shapes(model), seed)
    svrm = root / "svrm" / "svrm.safetensors"
    if not svrm.is_file():
        svrm.parent.mkdir(parents=True, exist_ok=True)
        with parameters_on_meta():
            model = SVRM()
        print("  writing svrm/svrm.safetensors ...", flush=True)
        write_safetensors(svrm, tensor_shapes(model), len(parts))


def stage_inputs():
    """Small inputs for each stage, the same in every mode."""
    import torch

    from backend.pipelines.hunyuan3d_v1.svrm.cameras import svrm_cameras

    g = torch.Generator().manual_seed(0)
    return {
        "pixels": torch.randn(1, 3, 64, 64, generator=g),
        "clip": torch.randn(1, 3, 224, 224, generator=g),
        "latents": torch.randn(1, 4, 8, 8, generator=g),
        "text": torch.randn(1, 77, 2048, generator=g) * 0.1,
        "pooled": torch.randn(1, 1280, generator=g) * 0.1,
        "time_ids": torch.tensor([[1536.0, 1024.0, 0.0, 0.0, 1536.0, 1024.0]]),
        "views": torch.randn(1, 7, 3, 56, 56, generator=g),
        "cameras": svrm_cameras()[None],
        "triplane": torch.randn(1, 3, 120, 256, 256, generator=g) * 0.1,
        "points": torch.rand(1, 4096, 3, generator=g) * 1.2 - 0.6,
    }


def stage_functions(x: dict):
    import torch

    def condition(m):
        latent = m["mvd_std.vae"].encode(x["pixels"]).latent_dist.mean
        embeds = [m[n](x["clip"]).image_embeds for n in ("mvd_std.vision_encoder", "mvd_std.vision_encoder_2")]
        return torch.cat([latent.flatten(), *(e.flatten() for e in embeds)])

    def multiview(m):
        added = {"text_embeds": x["pooled"], "time_ids": x["time_ids"]}
        return m["mvd_std.unet"](x["latents"], 500, encoder_hidden_states=x["text"], added_cond_kwargs=added).sample

    def decode(m):
        return m["mvd_std.vae"].decode(x["latents"]).sample

    def encode(m):
        return m["svrm.encoder"](x["views"], x["cameras"])

    def triplane(m):
        module = m["svrm.triplane"]
        return module.upsampler(module.pos_emb[:, :256])  # the weights are ready; the full forward is skipped (see above)

    def mesh(m):
        sdf, rgb = m["svrm.synthesizer"](x["triplane"], x["points"])
        return torch.cat([sdf.flatten(), rgb.flatten()])

    return {"condition": condition, "multiview": multiview, "decode": decode, "encode": encode, "triplane": triplane, "mesh": mesh}


def run_mode(mode: str, root: Path) -> dict:
    """One process, one mode: std's six stages in order; figures and outputs as a dict."""
    import torch

    from backend.memory import MemoryManager
    from backend.memory.stats import current_rss
    from backend.pipelines.hunyuan3d_v1.components import register_components
    from backend.pipelines.hunyuan3d_v1.multiview import StdMultiview
    from backend.pipelines.hunyuan3d_v1.svrm_pipeline import register_svrm

    manager = MemoryManager(mode=mode)
    register_components(manager, root / "mvd_std", "mvd_std", StdMultiview.parts)
    register_svrm(manager, root / "svrm" / "svrm.safetensors")
    functions = stage_functions(stage_inputs())
    baseline = current_rss()
    started = time.perf_counter()
    outputs = {}
    for stage, names in STAGES:
        with torch.inference_mode():
            out = manager.run_stage(stage, list(names), functions[stage])
        outputs[stage] = out.detach().float().flatten()[:4096].tolist()
        print(f"  {manager.last_stage_stats['stage']}: {manager.last_stage_stats['seconds']:.1f} s, "
              f"peak RSS {manager.last_stage_stats['peak_host_rss_bytes'] / GB:.2f} GB", file=sys.stderr, flush=True)
    components = manager.describe()["components"]
    return {
        "mode": mode,
        "seconds": time.perf_counter() - started,
        "baseline_rss": baseline,
        "peak_rss": max(s["peak_host_rss_bytes"] for s in manager.stats()),
        "stages": manager.stats(),
        "components": {c["name"]: {"storage": c["storage_bytes"], "compute": c["compute_bytes"], "dtype": c["storage_dtype"]}
                       for c in components},
        "outputs": outputs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--dir", type=Path, required=True,
                        help="folder for the weights (about 10.5 GB); kept, so a second run skips writing them")
    parser.add_argument("--modes", nargs="+", default=["stage", "resident"], choices=["stage", "resident", "cpu"],
                        help="modes to measure, each in a fresh process (default: stage resident)")
    parser.add_argument("--run-mode", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_mode:
        print(json.dumps(run_mode(args.run_mode, args.dir)))
        return 0

    import psutil

    print(f"machine: {psutil.cpu_count()} CPU cores, {psutil.virtual_memory().total / GB:.1f} GB RAM "
          f"({psutil.virtual_memory().available / GB:.1f} GB available at the start)", flush=True)
    print(f"writing Hunyuan3D-1 std weights (random, float16) into {args.dir} ...", flush=True)
    write_std_weights(args.dir)
    results = {}
    for mode in args.modes:
        print(f"running std's stages in {mode} mode ...", flush=True)
        out = subprocess.run([sys.executable, __file__, "--dir", str(args.dir), "--run-mode", mode], stdout=subprocess.PIPE, text=True)
        if out.returncode != 0:
            print(f"{mode} mode failed (exit {out.returncode})", file=sys.stderr)
            return out.returncode
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    return report(results)


def report(results: dict) -> int:
    components = next(iter(results.values()))["components"]
    print()
    print(f"{'component':26} {'file':>10} {'stored':>8} {'float32 to run':>15}")
    for name, c in components.items():
        print(f"{name:26} {c['storage'] / GB:7.2f} GB {c['dtype']:>8} {c['compute'] / GB:12.2f} GB")
    print()
    print(f"{'mode':10} {'peak RSS':>10} {'over baseline':>14} {'time':>8}   per-stage peak RSS (GB)")
    for mode, r in results.items():
        per_stage = ", ".join(f"{s['stage']} {s['peak_host_rss_bytes'] / GB:.2f}" for s in r["stages"])
        print(f"{mode:10} {r['peak_rss'] / GB:7.2f} GB {(r['peak_rss'] - r['baseline_rss']) / GB:11.2f} GB "
              f"{r['seconds']:6.1f} s   {per_stage}")
    stage_weights = {stage: sum(components[n]["compute"] for n in names) for stage, names in STAGES}
    largest_stage = max(stage_weights, key=stage_weights.get)
    largest = stage_weights[largest_stage]
    print(f"\nlargest stage: {largest_stage}, {largest / GB:.2f} GB of float32 weights; "
          f"all components {sum(c['compute'] for c in components.values()) / GB:.2f} GB")
    ok = True
    if "stage" in results:
        peak = results["stage"]["peak_rss"]
        passed = peak <= largest + GB
        ok &= passed
        print(f"goal: stage peak {peak / GB:.2f} GB <= largest stage + 1 GB = {(largest + GB) / GB:.2f} GB: {'met' if passed else 'NOT met'}")
    if "stage" in results and len(results) > 1:
        for mode, r in results.items():
            if mode == "stage":
                continue
            diffs = {stage: max(abs(a - b) for a, b in zip(results["stage"]["outputs"][stage], r["outputs"][stage]))
                     for stage in results["stage"]["outputs"]}
            print(f"stage vs {mode}: peak RSS ratio {results['stage']['peak_rss'] / r['peak_rss']:.2f}; max abs diff of outputs: "
                  + ", ".join(f"{s} {d:.3g}" for s, d in diffs.items()))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
