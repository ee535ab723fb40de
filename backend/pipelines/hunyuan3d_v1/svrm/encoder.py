"""The image encoder: a DINOv2 ViT whose every LayerNorm is modulated by the view's camera.

Attribute names follow the official checkpoint (``img_encoder.model.*``), so its weights load
strictly into these modules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import EncoderConfig
from .layers import attention, merge_heads, split_heads

# DINOv2 resamples its positional grid by (patches + 0.1) / grid rather than to an exact size;
# the two differ, and the checkpoint was trained with this one.
POS_EMBED_SCALE_OFFSET = 0.1


class AdaNorm(nn.Module):
    """LayerNorm without affine weights, shifted and scaled per view by its camera embedding."""

    def __init__(self, width: int, eps: float):
        super().__init__()
        self.eps = eps
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x: torch.Tensor, camera: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(camera).float().chunk(2, dim=-1)
        normed = F.layer_norm(x.float(), x.shape[-1:], eps=self.eps)
        return (normed * (1 + scale[:, None]) + shift[:, None]).to(x.dtype)


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, width: int):
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(images).flatten(2).transpose(1, 2)


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (split_heads(part, self.heads) for part in self.qkv(x).chunk(3, dim=-1))
        return self.proj(merge_heads(attention(q, k, v)))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class LayerScale(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class EncoderBlock(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        width = config.width
        self.norm1 = AdaNorm(width, config.layer_norm_eps)
        self.attn = SelfAttention(width, config.heads)
        self.ls1 = LayerScale(width)
        self.norm2 = AdaNorm(width, config.layer_norm_eps)
        self.mlp = Mlp(width, width * config.mlp_ratio)
        self.ls2 = LayerScale(width)

    def forward(self, x: torch.Tensor, camera: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x, camera)))
        return x + self.ls2(self.mlp(self.norm2(x, camera)))


class CameraModulatedViT(nn.Module):
    """ViT over one image per row; returns the class token and all patch tokens, normalised."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        width = config.width
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + config.pos_embed_grid**2, width))
        # Only used for masked-image pre-training; kept so the checkpoint loads strictly.
        self.mask_token = nn.Parameter(torch.zeros(1, width))
        self.cam_embed = nn.Sequential(nn.Linear(config.camera_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.patch_embed = PatchEmbed(config.patch_size, width)
        self.blocks = nn.ModuleList(EncoderBlock(config) for _ in range(config.depth))
        self.norm = AdaNorm(width, config.layer_norm_eps)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)

    def positional_embedding(self, rows: int, cols: int, dtype: torch.dtype) -> torch.Tensor:
        """The learned embedding resampled (bicubic, in float32) to a rows x cols patch grid."""
        grid = self.config.pos_embed_grid
        if rows == cols == grid:
            return self.pos_embed.to(dtype)
        pos = self.pos_embed.float()
        patches = pos[:, 1:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
        scale = ((rows + POS_EMBED_SCALE_OFFSET) / grid, (cols + POS_EMBED_SCALE_OFFSET) / grid)
        patches = F.interpolate(patches, scale_factor=scale, mode="bicubic", antialias=False)
        if patches.shape[-2:] != (rows, cols):
            raise ValueError(f"positional embedding resampled to {tuple(patches.shape[-2:])}, expected {(rows, cols)}")
        patches = patches.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)
        return torch.cat([pos[:, :1], patches], dim=1).to(dtype)

    def forward(self, images: torch.Tensor, cameras: torch.Tensor) -> torch.Tensor:
        """images (N, 3, H, W) normalised, cameras (N, camera_dim) -> tokens (N, 1 + patches, width)."""
        patch = self.config.patch_size
        rows, cols = images.shape[-2] // patch, images.shape[-1] // patch
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1)
        x = x + self.positional_embedding(rows, cols, x.dtype)
        camera = self.cam_embed(cameras)
        for block in self.blocks:
            x = block(x, camera)
        return self.norm(x, camera)


class ImageEncoder(nn.Module):
    """Encodes a batch of view sets into one context sequence per set for the triplane transformer."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.model = CameraModulatedViT(config)

    def forward(self, images: torch.Tensor, cameras: torch.Tensor) -> torch.Tensor:
        """images (B, V, 3, H, W), cameras (B, V, camera_dim) -> context (B, tokens x V, width).

        The context is token-major (index = token * V + view), the order the checkpoint saw.
        """
        batch, views = images.shape[:2]
        tokens = self.model(images.flatten(0, 1), cameras.flatten(0, 1).to(images.dtype))
        return tokens.view(batch, views, *tokens.shape[1:]).transpose(1, 2).flatten(1, 2)
