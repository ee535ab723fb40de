"""The triplane synthesizer: SDF and colour at 3D points, read from the triplane by a small MLP.

Attribute names follow the official checkpoint (``render.*``). Points are in SVRM's own frame:
Z up, the first view's camera on +X; the triplane spans the cube of side ``box_size``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import SynthesizerConfig

# Which two point coordinates address each plane, as (column, row): planes xy, xz and zy.
PLANE_AXES = ((0, 1), (0, 2), (2, 1))
# The colour head's sigmoid is widened a little so pure black and white are reachable.
COLOR_MARGIN = 0.001


class NeusVariance(nn.Module):
    """NeuS's learned sharpness, inv_s = exp(10 * _inv_std); only volume rendering uses it."""

    def __init__(self, initial_inv_std: float):
        super().__init__()
        self._inv_std = nn.Parameter(torch.tensor(initial_inv_std))


class TriplaneDecoder(nn.Module):
    """One MLP shared by SDF and colour: 3 x channels features -> (sdf, r, g, b) logits."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3 * channels, hidden), nn.ReLU(), nn.Linear(hidden, 4))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


class TriplaneSynthesizer(nn.Module):
    def __init__(self, config: SynthesizerConfig):
        super().__init__()
        self.config = config
        self.decoder = TriplaneDecoder(config.channels, config.hidden)
        # The checkpoint stores the variance at render.renderer.ray_marcher.variance.
        self.renderer = nn.ModuleDict({"ray_marcher": nn.ModuleDict({"variance": NeusVariance(config.initial_inv_std)})})

    def sample_features(self, triplane: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Bilinear features (B, N, 3 x channels), planes concatenated in order, computed in float32.

        triplane (B, 3, C, H, W); points (B, N, 3). Outside the box the features are zero.
        """
        batch, planes, channels, height, width = triplane.shape
        # Written as the reference writes it: in float32, 2 / box_size * p and p / (box_size / 2) differ
        # by one ulp for about a fifth of the points, which moves features on a rough triplane.
        coords = (2 / self.config.box_size) * points.float()
        grids = torch.stack([coords[..., list(axes)] for axes in PLANE_AXES], dim=1)  # (B, 3, N, 2)
        sampled = F.grid_sample(
            triplane.float().reshape(batch * planes, channels, height, width),
            grids.reshape(batch * planes, 1, -1, 2),
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        )  # (B*3, C, 1, N)
        return sampled.view(batch, planes, channels, -1).permute(0, 3, 1, 2).reshape(batch, -1, planes * channels)

    def forward(self, triplane: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """triplane (B, 3, C, H, W), points (B, N, 3) -> sdf (B, N) and rgb (B, N, 3), float32.

        The SDF is NeuS-signed: negative inside the object, positive outside.
        """
        weight = self.decoder.net[0].weight
        out = self.decoder(self.sample_features(triplane, points).to(weight.dtype)).float()
        rgb = torch.sigmoid(out[..., 1:4]) * (1 + 2 * COLOR_MARGIN) - COLOR_MARGIN
        return out[..., 0], rgb
