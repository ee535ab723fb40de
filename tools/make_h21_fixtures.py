"""Write the golden tensors the Hunyuan3D-2.1 DiT tests compare against, from the official code.

There is no package of the 2.1 code, so this script imports its DiT, mixture-of-experts and
scheduler modules from a checkout of the public repository (Tencent-Hunyuan/Hunyuan3D-2.1, read
only, never copied here), builds a tiny random DiT with the release's structure (long skips, a
dense block with a skip, mixture-of-experts blocks), and writes to ``--out``:

- ``h21_tiny_dit.ckpt``: its weights as the release stores them (``{"model": state_dict}``);
- ``h21_golden.safetensors``: the inputs, every block's output and the final velocity of one
  forward pass, and a few sampler steps with classifier-free guidance as the official pipeline
  runs them (the initial noise, the time fed to the model and the latents after each step);
- ``h21_fixtures.json``: the DiT's config.yaml parameters, the sampler settings, the source commit.

Usage::

    python tools/make_h21_fixtures.py --checkout PATH/TO/Hunyuan3D-2.1 [--out tests/data]

The official modules need ``diffusers`` (a backend requirement) and ``einops`` (only for this
script: ``pip install einops``). Their ``moe_layers.py`` also imports three ``timm`` layers it
never uses; when timm is not installed (it would pull in torchvision and replace torch) those
names are given empty classes.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

SEED = 2101
PARAMS = {  # the release's config.yaml keys, tiny sizes
    "input_size": 16, "in_channels": 8, "hidden_size": 32, "context_dim": 24, "depth": 7, "num_heads": 2,
    "qk_norm": True, "text_len": 10, "with_decoupled_ca": False, "use_attention_pooling": False,
    "qk_norm_type": "rms", "qkv_bias": False, "use_pos_emb": False,
    "num_moe_layers": 2, "num_experts": 4, "moe_top_k": 2,
}
BATCH, TIMES = 2, [0.25, 0.7]
SAMPLER_STEPS, GUIDANCE_SCALE = 4, 5.0


def official_modules(checkout: Path) -> tuple[types.ModuleType, types.ModuleType]:
    """The official ``hunyuandit`` and ``schedulers`` modules, without running the package's heavy ``__init__``."""
    package_root = checkout / "hy3dshape" / "hy3dshape"
    if not (package_root / "models" / "denoisers" / "hunyuandit.py").is_file():
        sys.exit(f"error: {checkout} is not a checkout of Hunyuan3D-2.1 (no hy3dshape/hy3dshape/models/denoisers/hunyuandit.py)")
    for name, folder in (("h21_denoisers", package_root / "models" / "denoisers"), ("h21_shape", package_root)):
        package = types.ModuleType(name)
        package.__path__ = [str(folder)]
        sys.modules[name] = package
    import diffusers.models.attention  # noqa: F401 - first, while it can still see that timm is absent

    try:
        import timm.models.vision_transformer  # noqa: F401
    except ImportError:
        unused = types.ModuleType("timm.models.vision_transformer")
        unused.PatchEmbed = unused.Attention = unused.Mlp = type("UnusedTimmLayer", (), {})
        sys.modules.update({"timm": types.ModuleType("timm"), "timm.models": types.ModuleType("timm.models"),
                            "timm.models.vision_transformer": unused})
    if not hasattr(torch.backends.cuda, "sdp_kernel"):  # removed from newer torch; the official code only wraps SDPA in it
        import contextlib
        torch.backends.cuda.sdp_kernel = lambda **_kwargs: contextlib.nullcontext()
    try:
        return importlib.import_module("h21_denoisers.hunyuandit"), importlib.import_module("h21_shape.schedulers")
    except ImportError as exc:
        sys.exit(f"error: the official modules need {exc.name or exc}, which is not installed here: pip install {exc.name or 'einops'}")


def randomise(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Random weights everywhere, including norm scales and biases, so a misplaced one shows."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if parameter.ndim > 1:
                parameter.copy_(noise / parameter.shape[-1] ** 0.5)
            elif "norm" in name and name.endswith("weight"):
                parameter.copy_(1.0 + 0.2 * noise)
            else:
                parameter.copy_(0.1 * noise)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkout", type=Path, required=True, help="a checkout of github.com/Tencent-Hunyuan/Hunyuan3D-2.1")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests" / "data",
                        help="folder for the fixture files (default: tests/data)")
    args = parser.parse_args(argv)
    hunyuandit, schedulers = official_modules(args.checkout)

    generator = torch.Generator().manual_seed(SEED)
    torch.manual_seed(SEED)
    model = hunyuandit.HunYuanDiTPlain(**PARAMS).eval()
    randomise(model, generator)

    golden: dict[str, torch.Tensor] = {}
    latents = torch.randn(BATCH, PARAMS["input_size"], PARAMS["in_channels"], generator=generator)
    context = torch.randn(BATCH, PARAMS["text_len"], PARAMS["context_dim"], generator=generator)
    t = torch.tensor(TIMES)
    golden.update({"forward.latents": latents, "forward.t": t, "forward.context": context})
    hooks = [block.register_forward_hook(lambda _m, _a, out, i=i: golden.__setitem__(f"forward.block.{i}", out.detach().clone()))
             for i, block in enumerate(model.blocks)]
    with torch.inference_mode():
        golden["forward.velocity"] = model(latents, t, {"main": context})
    for hook in hooks:
        hook.remove()

    # The official pipeline's sampling loop (Hunyuan3DDiTFlowMatchingPipeline.__call__), float32, batch 1.
    scheduler = schedulers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(sigmas=np.linspace(0, 1, SAMPLER_STEPS), device="cpu")
    sample = torch.randn(1, PARAMS["input_size"], PARAMS["in_channels"], generator=generator)
    condition = torch.randn(1, PARAMS["text_len"], PARAMS["context_dim"], generator=generator)
    golden.update({"sampler.noise": sample.clone(), "sampler.context": condition})
    cond = {"main": torch.cat([condition, torch.zeros_like(condition)])}
    with torch.inference_mode():
        for step, timestep in enumerate(scheduler.timesteps):
            model_t = timestep.expand(2).to(sample.dtype) / scheduler.config.num_train_timesteps
            velocity_cond, velocity_uncond = model(torch.cat([sample, sample]), model_t, cond).chunk(2)
            velocity = velocity_uncond + GUIDANCE_SCALE * (velocity_cond - velocity_uncond)
            sample = scheduler.step(velocity, timestep, sample).prev_sample
            golden[f"sampler.t.{step}"] = model_t[:1].clone()
            golden[f"sampler.latents.{step}"] = sample.clone()

    args.out.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict()}, args.out / "h21_tiny_dit.ckpt")
    save_file({key: value.contiguous() for key, value in golden.items()}, args.out / "h21_golden.safetensors")
    commit = subprocess.run(["git", "-C", str(args.checkout), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "unknown"
    record = {"source": f"Tencent-Hunyuan/Hunyuan3D-2.1 @ {commit}", "torch": torch.__version__, "seed": SEED,
              "params": PARAMS, "sampler": {"steps": SAMPLER_STEPS, "guidance_scale": GUIDANCE_SCALE}}
    (args.out / "h21_fixtures.json").write_text(json.dumps(record, indent=1) + "\n")
    sizes = {p.name: p.stat().st_size for p in args.out.glob("h21_*")}
    print(json.dumps({"written": sizes, "total_bytes": sum(sizes.values())}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
