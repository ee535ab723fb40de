"""Hunyuan3D-2's conditioner and sampler, ours vs the official hy3dgen 2.0.2, on the same random weights (CPU, float32).

Builds the official conditioner and DiT with random weights at the chosen size, writes them in
the official combined-file layout, loads that file into ours through the backend's loader, then
runs both on the same picture tensor and seed: DINOv2 once, then the sampler step by step. It
prints the time of each, the ratio, and the largest difference of the image tokens and of the
final latents relative to their scale.

    python benchmarks/h2_sampling.py                      # mid size (DINOv2-base-like, 4+8 DiT blocks), 5 turbo steps
    python benchmarks/h2_sampling.py --size mini --steps 5   # the released mini-turbo sizes (about 12 GB of RAM)

Needs the oracle: pip install --no-deps hy3dgen==2.0.2 einops
"""

from __future__ import annotations

import argparse
import platform
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
from backend.pipelines.hunyuan3d_v2.sampler import Guidance, initial_noise, sample  # noqa: E402

DINO_GIANT = {"hidden_size": 1536, "num_hidden_layers": 40, "num_attention_heads": 24, "image_size": 518}
DINO_MID = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "image_size": 518}
SIZES = {
    # name: (DINOv2 sizes, DiT hidden, double blocks, single blocks, latent tokens)
    "mid": (DINO_MID, 1024, 4, 8, 512),
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


class _PreparedImage:
    def __init__(self, image: torch.Tensor):
        self.image = image

    def __call__(self, _image, **_kwargs):
        return {"image": self.image, "mask": torch.ones_like(self.image[:, :1])}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="mid", help="model sizes (default mid)")
    parser.add_argument("--steps", type=int, default=5, help="sampling steps (default 5)")
    parser.add_argument("--cfg", action="store_true", help="a base model with classifier-free guidance instead of a turbo model")
    args = parser.parse_args()
    turbo = not args.cfg
    settings = config(args.size, turbo)
    schedulers, pipelines = shapegen_module("schedulers"), shapegen_module("pipelines")
    torch.manual_seed(0)
    conditioner = shapegen_module("models.conditioner").SingleImageEncoder(**settings["conditioner"]["params"]).eval()
    dit = shapegen_module("models.denoisers").Hunyuan3DDiT(**settings["model"]["params"]).eval()
    image = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(1)) * 2 - 1
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"size {args.size}: DINOv2 {sum(p.numel() for p in conditioner.parameters()) / 1e6:.0f} M, "
          f"DiT {sum(p.numel() for p in dit.parameters()) / 1e6:.0f} M parameters; "
          f"{'turbo (consistency, guidance embedded)' if turbo else 'classifier-free guidance'}, {args.steps} steps, float32")

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

        with torch.inference_mode():
            start = time.perf_counter()
            theirs_tokens = conditioner(image=image)["main"]
            theirs_condition_s = time.perf_counter() - start
            start = time.perf_counter()
            ours_tokens = ours_conditioner(image)
            ours_condition_s = time.perf_counter() - start

        scheduler_cls = getattr(schedulers, settings["scheduler"]["target"].rsplit(".", 1)[1])
        pipeline = pipelines.Hunyuan3DDiTFlowMatchingPipeline(
            vae=torch.nn.Module(), model=dit, scheduler=scheduler_cls(**settings["scheduler"]["params"]),
            conditioner=conditioner, image_processor=_PreparedImage(image), device="cpu", dtype=torch.float32)
        pipeline.vae.latent_shape = (settings["vae"]["params"]["num_latents"], 64)
        marks = [time.perf_counter()]
        theirs_latents = pipeline(image=image, num_inference_steps=args.steps, guidance_scale=5.0, generator=torch.Generator().manual_seed(2),
                                  output_type="latent", enable_pbar=False, callback=lambda *_: marks.append(time.perf_counter()),
                                  callback_steps=1)
        theirs_steps = [b - a for a, b in zip(marks[1:], marks[2:])]

        ours_marks = [time.perf_counter()]
        with torch.inference_mode():
            noise = initial_noise(2, (1, pipeline.vae.latent_shape[0], 64), torch.float32, torch.device("cpu"))
            ours_latents = sample(ours_dit, ours_tokens, noise, ours_config.scheduler, args.steps, Guidance(5.0, embedded=turbo),
                                  on_step=lambda *_: ours_marks.append(time.perf_counter()))
        ours_steps = [b - a for a, b in zip(ours_marks, ours_marks[1:])]

    # The official pipeline's first step also runs its conditioner, so its steps are compared from the second on.
    theirs_step = sum(theirs_steps) / len(theirs_steps)
    ours_step = sum(ours_steps[1:]) / len(ours_steps[1:])
    print(f"conditioner: hy3dgen {theirs_condition_s:.2f} s, ours {ours_condition_s:.2f} s "
          f"(x{theirs_condition_s / ours_condition_s:.2f}); tokens differ by {relative(ours_tokens, theirs_tokens):.1e} of their scale")
    print(f"sampling step (mean of steps 2..{args.steps}): hy3dgen {theirs_step:.2f} s, ours {ours_step:.2f} s (x{theirs_step / ours_step:.2f})")
    print(f"final latents differ by {relative(ours_latents, theirs_latents):.1e} of their scale")


if __name__ == "__main__":
    main()
