"""Nano: picture -> triplane -> signed distance and colour at any point.

The same family as Hunyuan3D-1's SVRM, small enough to train on a laptop CPU:

1. a convolutional encoder reads the framed 4-channel picture (premultiplied RGB and alpha);
2. its deepest features are flattened into one latent vector, which a convolutional decoder
   unfolds into three feature planes (XY, XZ, YZ);
3. the encoder's mid-level feature map, which sees the object face-on, is added to the YZ
   plane together with the picture itself at that size (the camera looks along -X, so the
   picture's columns run along +Y and its rows down -Z);
4. a point's features are sampled bilinearly from the three planes, concatenated with its
   coordinates, and a small MLP maps them to the signed distance and the RGB colour; the
   distance is given relative to the surface level found after training (``calibrate.py``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class NanoConfig:
    """Sizes of a Nano model.

    Args:
        image_size: side of the square input picture.
        encoder_channels: channels after each stride-2 stage of the encoder (the first stage is one
            convolution, the others two, which keeps the full-resolution work small).
        latent_dim: size of the global latent vector.
        plane_size: side of each triplane feature plane.
        plane_channels: features per plane.
        hidden_dim: width of the point MLP.
        hidden_layers: hidden layers of the point MLP.
        bound: the planes span [-bound, bound]^3.
        surface_level: the raw signed distance at which the surface lies; set after training
            from validation shapes (0 while training), and subtracted from every query.
    """

    image_size: int = 128
    encoder_channels: tuple[int, ...] = (24, 48, 96, 160, 256)
    latent_dim: int = 384
    plane_size: int = 32
    plane_channels: int = 32
    hidden_dim: int = 128
    hidden_layers: int = 2
    bound: float = 0.6
    surface_level: float = 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "encoder_channels": list(self.encoder_channels)}

    @classmethod
    def from_dict(cls, values: dict) -> NanoConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown Nano config keys: {', '.join(unknown)}")
        values = dict(values)
        if "encoder_channels" in values:
            values["encoder_channels"] = tuple(values["encoder_channels"])
        return cls(**values)

    @property
    def aligned_level(self) -> int:
        """Index of the encoder stage whose output has the planes' resolution."""
        size = self.image_size
        for level in range(len(self.encoder_channels)):
            size //= 2
            if size == self.plane_size:
                return level
        raise ValueError(f"plane_size {self.plane_size} must be image_size {self.image_size} halved 1 to "
                         f"{len(self.encoder_channels)} times")


def conv_block(in_channels: int, out_channels: int, stride: int, convolutions: int = 2) -> nn.Sequential:
    layers: list[nn.Module] = []
    for k in range(convolutions):
        layers += [
            nn.Conv2d(in_channels if k == 0 else out_channels, out_channels, 3, stride=stride if k == 0 else 1, padding=1),
            nn.GroupNorm(8, out_channels),
            nn.SiLU(),
        ]
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    def __init__(self, config: NanoConfig):
        super().__init__()
        channels = (4, *config.encoder_channels)
        self.stages = nn.ModuleList(
            conv_block(channels[i], channels[i + 1], 2, convolutions=1 if i == 0 else 2) for i in range(len(config.encoder_channels))
        )
        bottom = config.image_size // 2 ** len(config.encoder_channels)
        self.to_latent = nn.Linear(channels[-1] * bottom * bottom, config.latent_dim)
        self.aligned_level = config.aligned_level

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 4, S, S) in [0, 1] -> latent (B, latent_dim) and the plane-sized feature map (+ the picture)."""
        x = images * 2.0 - 1.0
        aligned = x
        for level, stage in enumerate(self.stages):
            x = stage(x)
            if level == self.aligned_level:
                # The picture itself, averaged down, rides along: colours read straight off it.
                aligned = torch.cat([x, F.adaptive_avg_pool2d(images, x.shape[-2:])], dim=1)
        return self.to_latent(x.flatten(1)), aligned


class TriplaneDecoder(nn.Module):
    """Latent vector (+ the face-on feature map) -> (B, 3, C, P, P) planes.

    Each doubling is a stride-2 transposed convolution (cheap: one tap per output pixel); a 3x3
    convolution mixes neighbours at every level but the last, the largest and dearest one.
    """

    def __init__(self, config: NanoConfig):
        super().__init__()
        self.start = 4
        doublings = (config.plane_size // self.start).bit_length() - 1
        if self.start * 2**doublings != config.plane_size:
            raise ValueError(f"plane_size must be 4 times a power of two, got {config.plane_size}")
        width = config.encoder_channels[-1]
        self.from_latent = nn.Linear(config.latent_dim, width * self.start * self.start)
        layers: list[nn.Module] = []
        for level in range(doublings):
            narrower = max(width * 3 // 4 // 16 * 16, 3 * config.plane_channels)
            layers += [nn.ConvTranspose2d(width, narrower, 2, stride=2), nn.GroupNorm(8, narrower), nn.SiLU()]
            if level < doublings - 1:
                layers.append(conv_block(narrower, narrower, 1, convolutions=1))
            width = narrower
        self.up = nn.Sequential(*layers)
        self.to_planes = nn.Conv2d(width, 3 * config.plane_channels, 1)
        self.from_aligned = nn.Conv2d(config.encoder_channels[config.aligned_level] + 4, config.plane_channels, 1)
        self.width = config.encoder_channels[-1]
        self.channels = config.plane_channels

    def forward(self, latent: torch.Tensor, aligned: torch.Tensor) -> torch.Tensor:
        x = self.from_latent(latent).view(latent.shape[0], self.width, self.start, self.start)
        planes = self.to_planes(self.up(x)).unflatten(1, (3, self.channels))
        # Rows of the picture run from top (+Z) to bottom; plane rows run from -Z to +Z.
        face_on = self.from_aligned(aligned).flip(-2)
        return torch.cat([planes[:, :2], planes[:, 2:] + face_on[:, None]], dim=1)


class PointDecoder(nn.Module):
    """Triplane features + coordinates of points -> signed distance and RGB."""

    def __init__(self, config: NanoConfig):
        super().__init__()
        layers: list[nn.Module] = []
        width = 3 * config.plane_channels + 3
        for _ in range(config.hidden_layers):
            layers += [nn.Linear(width, config.hidden_dim), nn.SiLU()]
            width = config.hidden_dim
        layers.append(nn.Linear(width, 4))
        self.net = nn.Sequential(*layers)
        self.bound = config.bound
        self.surface_level = config.surface_level

    def forward(self, planes: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """planes (B, 3, C, P, P), points (B, N, 3) -> sdf (B, N), rgb (B, N, 3)."""
        uv = points / self.bound
        # grid_sample reads (first, second) as (column, row): plane 0 is (x, y), plane 1 (x, z), plane 2 (y, z).
        coordinates = torch.stack([uv[..., [0, 1]], uv[..., [0, 2]], uv[..., [1, 2]]], dim=1)  # (B, 3, N, 2)
        batch, _, channels, size, _ = planes.shape
        sampled = F.grid_sample(
            planes.reshape(batch * 3, channels, size, size),
            coordinates.reshape(batch * 3, 1, -1, 2),
            mode="bilinear",
            padding_mode="border",
            align_corners=False,
        )  # (B*3, C, 1, N)
        features = sampled.view(batch, 3 * channels, -1).transpose(1, 2)
        out = self.net(torch.cat([features, uv], dim=-1))
        return out[..., 0] - self.surface_level, torch.sigmoid(out[..., 1:])


class NanoModel(nn.Module):
    """Framed picture -> triplane, and triplane + points -> (sdf, rgb)."""

    def __init__(self, config: NanoConfig = NanoConfig()):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.triplane = TriplaneDecoder(config)
        self.decoder = PointDecoder(config)

    def set_surface_level(self, level: float) -> None:
        """Place the surface at raw distance ``level`` (kept in the config, so saved with the weights)."""
        self.config = replace(self.config, surface_level=float(level))
        self.decoder.surface_level = float(level)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 4, S, S) framed pictures in [0, 1] -> (B, 3, C, P, P) planes."""
        latent, aligned = self.encoder(images)
        return self.triplane(latent, aligned)

    def query(self, planes: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decoder(planes, points)

    def forward(self, images: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.query(self.encode(images), points)
