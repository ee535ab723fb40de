"""The official Hunyuan3D-2 code (``hy3dgen==2.0.2``) as a test-only oracle; the backend never imports it.

It is installed without its dependencies (``pip install --no-deps "hy3dgen==2.0.2"``, as in the
README's test command and ``.ci/run``); the few packages its shape modules import (einops,
OpenCV) come with the test extra. Its package ``__init__`` files import the whole app (texture
pipeline, mesh post-processing through pymeshlab, picture loading through OpenCV);
``shapegen_module`` (and ``texgen_module``) enters one ``hy3dgen.shapegen`` (``hy3dgen.texgen``) module with those ``__init__`` files skipped.
torchvision's CPU build does not install beside this torch, and the conditioner uses only three
tensor transforms from it; they are provided below with the calls torchvision itself makes (the
resize is bilinear ``interpolate`` with antialiasing).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

INSTALL = 'pip install --no-deps "hy3dgen==2.0.2"'
BENCHMARKS = str(Path(__file__).resolve().parents[1] / "benchmarks")  # h2_random_weights draws the official VAE's values
if BENCHMARKS not in sys.path:
    sys.path.append(BENCHMARKS)


def _tensor_transforms() -> types.ModuleType:
    transforms = types.ModuleType("torchvision.transforms")

    class InterpolationMode:
        BILINEAR = "bilinear"

    class Compose:
        def __init__(self, steps):
            self.steps = steps

        def __call__(self, x):
            for step in self.steps:
                x = step(x)
            return x

    class Resize:
        def __init__(self, size, interpolation=InterpolationMode.BILINEAR, antialias=True):
            self.size, self.mode, self.antialias = size, interpolation, antialias

        def __call__(self, x):
            height, width = x.shape[-2:]
            short, long = sorted((height, width))
            new_short, new_long = self.size, int(self.size * long / short)
            size = (new_short, new_long) if height <= width else (new_long, new_short)
            return F.interpolate(x, size=size, mode=self.mode, align_corners=False, antialias=self.antialias)

    class CenterCrop:
        def __init__(self, size):
            self.size = size

        def __call__(self, x):
            top, left = (x.shape[-2] - self.size) // 2, (x.shape[-1] - self.size) // 2
            return x[..., top:top + self.size, left:left + self.size]

    class Normalize:
        def __init__(self, mean, std):
            self.mean, self.std = mean, std

        def __call__(self, x):
            mean = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
            std = torch.as_tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
            return (x - mean) / std

    for cls in (InterpolationMode, Compose, Resize, CenterCrop, Normalize):
        setattr(transforms, cls.__name__, cls)
    return transforms


_PACKAGES = ("hy3dgen", "hy3dgen.shapegen", "hy3dgen.shapegen.models", "hy3dgen.texgen", "hy3dgen.texgen.utils",
             "hy3dgen.texgen.hunyuanpaint")


def _package_root() -> Path:
    if "hy3dgen" in sys.modules:
        return Path(next(iter(sys.modules["hy3dgen"].__path__)))
    spec = importlib.util.find_spec("hy3dgen")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the parity tests need the official package as an oracle: {INSTALL}")
    return Path(next(iter(spec.submodule_search_locations)))


def shapegen_module(name: str) -> types.ModuleType:
    """``hy3dgen.shapegen.<name>`` (e.g. ``models.conditioner``), without running the parent packages' ``__init__``.

    The parents are registered as empty namespaces over their real folders, so their submodules
    resolve normally; a parent already imported for real is left alone.
    """
    return _official_module(f"shapegen.{name}")


def texgen_module(name: str) -> types.ModuleType:
    """``hy3dgen.texgen.<name>`` (e.g. ``hunyuanpaint.pipeline``, ``utils.dehighlight_utils``), as ``shapegen_module`` does.

    ``hy3dgen.texgen``'s own ``__init__`` would import the whole texture pipeline, whose renderer
    is a CUDA extension; the delighting and paint modules need only diffusers, transformers,
    einops and OpenCV.
    """
    return _official_module(f"texgen.{name}")


def _official_module(name: str) -> types.ModuleType:
    root = _package_root()
    for package in _PACKAGES:
        if package not in sys.modules:
            namespace = types.ModuleType(package)
            namespace.__path__ = [str(root.joinpath(*package.split(".")[1:]))]
            sys.modules[package] = namespace
    if importlib.util.find_spec("torchvision") is None and "torchvision" not in sys.modules:
        # Resolved first, while transformers still sees no torchvision (it would then reach for its image processors).
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, Dinov2Config, Dinov2Model  # noqa: F401

        torchvision = types.ModuleType("torchvision")
        # A spec, so that transformers' availability probe (find_spec) answers instead of raising.
        torchvision.__spec__ = importlib.machinery.ModuleSpec("torchvision", None)
        torchvision.transforms = _tensor_transforms()
        sys.modules["torchvision"] = torchvision
        sys.modules["torchvision.transforms"] = torchvision.transforms
    return importlib.import_module(f"hy3dgen.{name}")


# transformers 5 renamed DINOv2's modules; the official checkpoints keep the 4.x names.
_DINO_RENAMES = {
    ".attention.q_proj.": ".attention.attention.query.",
    ".attention.k_proj.": ".attention.attention.key.",
    ".attention.v_proj.": ".attention.attention.value.",
    ".attention.o_proj.": ".attention.output.dense.",
    ".mlp.down_proj.": ".mlp.weights_out.",
}


def official_conditioner_state(conditioner: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The oracle conditioner's weights under the checkpoint's (transformers 4.x) names, whatever transformers built it."""
    state = conditioner.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if ".mlp.up_proj." in key:
            continue
        if ".mlp.gate_proj." in key:
            # 4.x keeps the SwiGLU's gate and value projections as one matrix, gate rows first.
            out[key.replace(".mlp.gate_proj.", ".mlp.weights_in.")] = torch.cat([tensor, state[key.replace("gate_proj", "up_proj")]])
            continue
        for new, old in _DINO_RENAMES.items():
            key = key.replace(new, old)
        out[key] = tensor
    return out


def official_shape_vae(params: dict, seed: int = 0):
    """The official ShapeVAE built from ``params`` with random weights whose field looks trained (``trained_like_field``)."""
    import torch
    from h2_random_weights import trained_like_field

    autoencoders = shapegen_module("models.autoencoders")
    vae = autoencoders.ShapeVAE(**params).eval()
    trained_like_field(dict(vae.named_parameters()), params.get("num_freqs", 8), params.get("qk_norm", False),
                       torch.Generator().manual_seed(seed))
    return vae


def set_inside_share(vae, latents, share: float = 0.3, seed: int = 0) -> None:
    """Shift the official VAE's output bias so about ``share`` of the box is inside for ``latents``."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    points = torch.rand(1, 20_000, 3, generator=generator) * 2.02 - 1.01
    with torch.no_grad():
        tokens = vae(1.0 / vae.scale_factor * latents)
        logits = vae.geo_decoder(queries=points.to(tokens.dtype), latents=tokens)[0, :, 0].float()
        vae.geo_decoder.output_proj.bias -= torch.quantile(logits, 1.0 - share).to(vae.geo_decoder.output_proj.bias.dtype)


def installed_conditioner_state(conditioner: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checkpoint's conditioner weights (transformers 4.x names) under the names ``conditioner`` has with the installed transformers.

    The inverse of ``official_conditioner_state``: what the official loader's ``load_state_dict``
    needs when transformers 5 built the oracle's DINOv2.
    """
    wanted = conditioner.state_dict().keys()
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key not in wanted and ".mlp.weights_in." in key:
            gate, value = tensor.chunk(2)
            out[key.replace(".mlp.weights_in.", ".mlp.gate_proj.")] = gate
            out[key.replace(".mlp.weights_in.", ".mlp.up_proj.")] = value
            continue
        if key not in wanted:
            for new, old in _DINO_RENAMES.items():
                key = key.replace(old, new)
        out[key] = tensor
    return out
