"""The official Hunyuan3D-2 code (``hy3dgen==2.0.2``) as a test-only oracle.

It is installed without its dependencies (``pip install --no-deps hy3dgen==2.0.2``, as in the
README's test command and ``.ci/run``): its package ``__init__`` files pull in the texture
pipeline, gradio-era post-processing (pymeshlab), OpenCV and torchvision. ``shapegen_module``
imports one ``hy3dgen.shapegen`` module with those ``__init__`` files skipped, so only the
module's own imports must be installed (einops, tqdm, scikit-image, PyYAML for the VAE).
The backend never imports hy3dgen.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

INSTALL = "pip install --no-deps hy3dgen==2.0.2"
_PACKAGES = ("hy3dgen", "hy3dgen.shapegen", "hy3dgen.shapegen.models")


def _package_root() -> Path:
    if "hy3dgen" in sys.modules:
        return Path(next(iter(sys.modules["hy3dgen"].__path__)))
    spec = importlib.util.find_spec("hy3dgen")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the parity tests need the official package as an oracle: {INSTALL}")
    return Path(next(iter(spec.submodule_search_locations)))


def shapegen_module(name: str) -> types.ModuleType:
    """``hy3dgen.shapegen.<name>`` (e.g. 'models.autoencoders'), without running the parents' ``__init__``.

    The parent packages are registered as empty namespaces over their real folders, so their
    submodules resolve normally; a parent already imported for real is left alone.
    """
    root = _package_root()
    for package in _PACKAGES:
        if package not in sys.modules:
            namespace = types.ModuleType(package)
            namespace.__path__ = [str(root.joinpath(*package.split(".")[1:]))]
            sys.modules[package] = namespace
    return importlib.import_module(f"hy3dgen.shapegen.{name}")


def official_shape_vae(params: dict, seed: int = 0):
    """The official ShapeVAE built from ``params`` with random weights whose field looks trained.

    Plain random weights give a noisy field of small logits, where coarse-to-fine decoding has to
    refine almost everything. Here the Fourier features' weights fall off with frequency (a
    smooth surface), the output is scaled so logits reach tens away from the surface, and the
    cross-attention is sharpened, as in a trained occupancy decoder.
    """
    import torch

    autoencoders = shapegen_module("models.autoencoders")
    generator = torch.Generator().manual_seed(seed)
    vae = autoencoders.ShapeVAE(**params).eval()
    with torch.no_grad():
        for name, tensor in vae.named_parameters():
            if tensor.ndim > 1:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) / tensor.shape[1] ** 0.5)
            elif "norm" in name or name.split(".")[-2].startswith("ln"):
                tensor.copy_(1.0 + 0.1 * torch.randn(tensor.shape, generator=generator) if name.endswith("weight")
                             else 0.1 * torch.randn(tensor.shape, generator=generator))
            else:
                tensor.copy_(0.1 * torch.randn(tensor.shape, generator=generator))
        num_freqs = params.get("num_freqs", 8)
        query = vae.geo_decoder.query_proj.weight  # columns: xyz, then sin and cos of each coordinate's frequencies
        falloff = (0.25 ** torch.arange(num_freqs, dtype=torch.float32)).repeat(3).repeat(2)
        query[:, 3:] *= falloff
        query[:, :3] *= 3.0
        vae.geo_decoder.output_proj.weight *= 30.0
        # Peaked cross-attention, as trained: each point draws on few tokens, which is what
        # FlashVDM's key selection relies on.
        attention = vae.geo_decoder.cross_attn_decoder.attn.attention
        if params.get("qk_norm", False):
            attention.q_norm.weight *= 4.0
            attention.k_norm.weight *= 4.0
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
