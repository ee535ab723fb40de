"""Hunyuan3D-2's conditioner and DiT, ours vs the official hy3dgen 2.0.2, on the same random weights (CPU, float32).

Builds the official conditioner and DiT with random weights at the chosen size, writes them in
the official combined-file layout and loads that file into ours through the backend's loader.
Then it times one conditioner pass and one sampling step's DiT call (batch 2 with classifier-free
guidance, or batch 1 with the guidance embedding of the turbo models), alternating official and
ours ``--repeats`` times so that other load on the machine hits both alike, and prints the
medians, their ratio and the largest difference of the outputs relative to their scale. (The
tests compare whole sampling runs step by step.)

    python benchmarks/h2_sampling.py                          # mid size, turbo model
    python benchmarks/h2_sampling.py --size mini --cfg        # the released mini sizes (about 12 GB of RAM)

Needs the oracle: pip install --no-deps "hy3dgen==2.0.2" (and the test extra)
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from hy3dgen_oracle import official_conditioner_state, shapegen_module  # noqa: E402

from backend.pipelines.hunyuan3d_v2.config import read_config  # noqa: E402
from backend.pipelines.hunyuan3d_v2.loading import load_conditioner, load_dit  # noqa: E402

DINO_GIANT = {"hidden_size": 1536, "num_hidden_layers": 40, "num_attention_heads": 24, "image_size": 518}
DINO_MID = {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6, "image_size": 518}
SIZES = {
    # name: (DINOv2 sizes, DiT hidden, double blocks, single blocks, latent tokens)
    "mid": (DINO_MID, 1024, 2, 4, 512),
    "mini": (DINO_GIANT, 1024, 8, 16, 512),
}


def config(size: str, turbo: bool) -> dict:
    dino, hidden, depth, single, latents = SIZES[size]
    dino_config = {"attention_probs_dropout_prob": 0.0, "drop_path_rate": 0.0, "hidden_act": "gelu", "hidden_dropout_prob": 0.0,
                   "initializer_range": 0.02, "layer_norm_eps": 1e-6, "layerscale_value": 1.0, "mlp_ratio": 4, "model_type": "dinov2",
                   "num_channels": 3, "patch_size": 14, "qkv_bias": True, "use_swiglu_ffn": True, **dino}
    model = {"in_channels": 64, "context_in_dim": dino["hidden_size"], "hidden_size": hidden, "mlp_ratio": 4.0, "num_heads": 16,
             "depth": depth, "depth_single_blocks": single, "axes_dim": [64], "theta": 10000, "qkv_bias": True, "guidance_embed": turbo}
    scheduler = "ConsistencyFlowMatchEulerDiscreteScheduler" if turbo else "FlowMatchEulerDiscreteScheduler"
    return {
        "model": {"target": "hy3dgen.shapegen.models.Hunyuan3DDiT", "params": model},
        "vae": {"target": "hy3dgen.shapegen.models.ShapeVAE", "params": {"num_latents": latents, "embed_dim": 64}},
        "conditioner": {"target": "hy3dgen.shapegen.models.SingleImageEncoder",
                        "params": {"main_image_encoder": {"type": "DinoImageEncoder",
                                                          "kwargs": {"config": dino_config, "image_size": 518}}}},
        "scheduler": {"target": f"hy3dgen.shapegen.schedulers.{scheduler}",
                      "params": {"num_train_timesteps": 1000, **({"pcm_timesteps": 100} if turbo else {})}},
        "image_processor": {"target": "hy3dgen.shapegen.preprocessors.ImageProcessorV2", "params": {"size": 512, "border_ratio": 0.15}},
    }


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="mid", help="model sizes (default mid)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each, alternating (default 3)")
    parser.add_argument("--cfg", action="store_true", help="a base model with classifier-free guidance instead of a turbo model")
    args = parser.parse_args()
    turbo = not args.cfg
    settings = config(args.size, turbo)
    torch.manual_seed(0)
    conditioner = shapegen_module("models.conditioner").SingleImageEncoder(**settings["conditioner"]["params"]).eval()
    dit = shapegen_module("models.denoisers").Hunyuan3DDiT(**settings["model"]["params"]).eval()
    generator = torch.Generator().manual_seed(1)
    image = torch.rand(1, 3, 512, 512, generator=generator) * 2 - 1
    batch = 1 if turbo else 2
    latents = torch.randn(batch, settings["vae"]["params"]["num_latents"], 64, generator=generator)
    t = torch.full((batch,), 0.4)
    guidance = torch.full((batch,), 5.0) if turbo else None
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"size {args.size}: DINOv2 {sum(p.numel() for p in conditioner.parameters()) / 1e6:.0f} M, "
          f"DiT {sum(p.numel() for p in dit.parameters()) / 1e6:.0f} M parameters, {latents.shape[1]} latents; "
          f"{'turbo (guidance embedded, batch 1)' if turbo else 'classifier-free guidance (batch 2)'}; float32")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        state = {f"conditioner.{k}": v for k, v in official_conditioner_state(conditioner).items()}
        state |= {f"model.{k}": v for k, v in dit.state_dict().items()}
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.fp16.safetensors"))
        del state
        (folder / "config.yaml").write_text(yaml.safe_dump(settings))
        ours_config = read_config(folder)
        ours_conditioner = load_conditioner(folder / "model.fp16.safetensors", ours_config)
        ours_dit = load_dit(folder / "model.fp16.safetensors", ours_config)
        runs = {
            "conditioner": (lambda: conditioner(image=image)["main"], lambda: ours_conditioner(image)),
            "DiT call": (lambda: dit(latents, t, {"main": condition}, guidance=guidance), lambda: ours_dit(latents, t, condition, guidance)),
        }
        with torch.inference_mode():
            condition = torch.cat([ours_conditioner(image)] * batch)
            for name, (theirs, ours) in runs.items():
                times: dict[str, list[float]] = {"hy3dgen": [], "ours": []}
                outputs: dict[str, torch.Tensor] = {}
                for _ in range(args.repeats):
                    for who, fn in (("hy3dgen", theirs), ("ours", ours)):
                        start = time.perf_counter()
                        outputs[who] = fn()
                        times[who].append(time.perf_counter() - start)
                theirs_s, ours_s = statistics.median(times["hy3dgen"]), statistics.median(times["ours"])
                print(f"{name}: hy3dgen {theirs_s:.2f} s, ours {ours_s:.2f} s (median of {args.repeats}; hy3dgen/ours x{theirs_s / ours_s:.2f}); "
                      f"outputs differ by {relative(outputs['ours'], outputs['hy3dgen']):.1e} of their scale")


if __name__ == "__main__":
    main()
