"""The image conditioner: DINOv2 tokens of the prepared picture, or of each named view (2mv).

The ViT is written here rather than taken from transformers: its attribute names are those of
transformers 4.x's ``Dinov2Model`` (``encoder.layer.N.attention.attention.query``,
``mlp.weights_in`` ...), which is how the official checkpoints name the weights, so the
``conditioner.*`` part of a checkpoint loads strictly whatever transformers version is installed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ConditionerConfig, DinoConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PatchEmbeddings(nn.Module):
    def __init__(self, config: DinoConfig):
        super().__init__()
        self.projection = nn.Conv2d(3, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.projection(pixels).flatten(2).transpose(1, 2)


class Embeddings(nn.Module):
    def __init__(self, config: DinoConfig):
        super().__init__()
        patches = (config.image_size // config.patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        # Used only in masked-image training; kept so the checkpoint's key loads.
        self.mask_token = nn.Parameter(torch.zeros(1, config.hidden_size))
        self.patch_embeddings = PatchEmbeddings(config)
        self.position_embeddings = nn.Parameter(torch.zeros(1, patches + 1, config.hidden_size))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embeddings(pixels)
        tokens = torch.cat([self.cls_token.expand(patches.shape[0], -1, -1), patches], dim=1)
        return tokens + self.position_embeddings


class SelfAttention(nn.Module):
    def __init__(self, config: DinoConfig):
        super().__init__()
        width = config.hidden_size
        self.heads = config.num_attention_heads
        self.query = nn.Linear(width, width, bias=config.qkv_bias)
        self.key = nn.Linear(width, width, bias=config.qkv_bias)
        self.value = nn.Linear(width, width, bias=config.qkv_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, self.heads, width // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.query(x)), heads(self.key(x)), heads(self.value(x)))
        return out.transpose(1, 2).reshape(batch, length, width)


class AttentionOutput(nn.Module):
    def __init__(self, config: DinoConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(x)


class Attention(nn.Module):
    def __init__(self, config: DinoConfig):
        super().__init__()
        self.attention = SelfAttention(config)
        self.output = AttentionOutput(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.attention(x))


class LayerScale(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.lambda1 = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.lambda1


class SwiGLU(nn.Module):
    """``weights_in`` holds the gate's rows, then the value's: silu(first half) * second half."""

    def __init__(self, config: DinoConfig):
        super().__init__()
        hidden = int(config.hidden_size * config.mlp_ratio)
        # DINOv2's SwiGLU keeps 2/3 of the nominal width, rounded up to a multiple of 8 (4096 for giant).
        hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        self.weights_in = nn.Linear(config.hidden_size, 2 * hidden)
        self.weights_out = nn.Linear(hidden, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.weights_in(x).chunk(2, dim=-1)
        return self.weights_out(F.silu(gate) * value)


class GeluMLP(nn.Module):
    """The plain MLP of DINOv2-large (Hunyuan3D-2.1): ``fc1``, exact GELU, ``fc2``."""

    def __init__(self, config: DinoConfig):
        super().__init__()
        hidden = int(config.hidden_size * config.mlp_ratio)
        self.fc1 = nn.Linear(config.hidden_size, hidden)
        self.fc2 = nn.Linear(hidden, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Layer(nn.Module):
    def __init__(self, config: DinoConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = Attention(config)
        self.layer_scale1 = LayerScale(config.hidden_size)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = SwiGLU(config) if config.use_swiglu_ffn else GeluMLP(config)
        self.layer_scale2 = LayerScale(config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.layer_scale1(self.attention(self.norm1(x)))
        return x + self.layer_scale2(self.mlp(self.norm2(x)))


class Encoder(nn.Module):
    def __init__(self, config: DinoConfig):
        super().__init__()
        self.layer = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))


class Dinov2(nn.Module):
    """DINOv2 ViT; ``forward`` returns every token after the final LayerNorm."""

    def __init__(self, config: DinoConfig):
        super().__init__()
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(pixels)
        for layer in self.encoder.layer:
            x = layer(x)
        return self.layernorm(x)


def view_embeddings(view_count: int, width: int) -> torch.Tensor:
    """[view_count, width]: the 1-D sine-then-cosine embedding of each view slot's index (float64 math, as upstream)."""
    omega = 1.0 / 10000 ** (torch.arange(width // 2, dtype=torch.float64) / (width / 2))
    angles = torch.arange(view_count, dtype=torch.float64)[:, None] * omega[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


class ImageEncoder(nn.Module):
    """Resize, normalise, DINOv2; for multiview, each view's tokens get its slot's embedding and are concatenated."""

    def __init__(self, config: ConditionerConfig):
        super().__init__()
        self.config = config
        self.model = Dinov2(config.dino)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def tokens_per_view(self) -> int:
        patches = (self.config.image_size // self.config.dino.patch_size) ** 2
        return patches + 1 if self.config.use_cls_token else patches

    def forward(self, images: torch.Tensor, view_indices: list[int] | None = None) -> torch.Tensor:
        """``images``: [B, 3, H, W] (or [B, V, 3, H, W] with ``view_indices``) in [-1, 1]; returns [B, V x tokens, width]."""
        views = images.shape[1] if images.dim() == 5 else 1
        pixels = images.reshape(-1, *images.shape[-3:])
        pixels = (pixels + 1) / 2
        size = self.config.image_size
        # torchvision's Resize(size) on a tensor: shorter side to ``size``, bilinear with antialiasing;
        # in float32 (the CPU has no antialiased resize in bfloat16).
        height, width = pixels.shape[-2:]
        target = (size, int(size * width / height)) if height <= width else (int(size * height / width), size)
        pixels = F.interpolate(pixels.float(), size=target, mode="bilinear", align_corners=False, antialias=True).to(pixels.dtype)
        top, left = (pixels.shape[-2] - size) // 2, (pixels.shape[-1] - size) // 2
        pixels = pixels[..., top:top + size, left:left + size]
        pixels = (pixels - self.mean.to(pixels.dtype)) / self.std.to(pixels.dtype)
        tokens = self.model(pixels)
        if not self.config.use_cls_token:
            tokens = tokens[:, 1:]
        if self.config.multiview:
            if view_indices is None or len(view_indices) != views:
                raise ValueError(f"a multiview conditioner needs one view index per view ({views} views)")
            tokens = tokens.view(-1, views, *tokens.shape[1:])
            embedding = view_embeddings(self.config.view_count, tokens.shape[-1])[list(view_indices)]
            tokens = tokens + embedding.to(tokens.dtype).to(tokens.device)[None, :, None, :]
            tokens = tokens.reshape(tokens.shape[0], -1, tokens.shape[-1])
        return tokens


class ImageConditioner(nn.Module):
    """The ``conditioner.*`` part of a checkpoint: one DINOv2 encoder under ``main_image_encoder``."""

    def __init__(self, config: ConditionerConfig):
        super().__init__()
        self.main_image_encoder = ImageEncoder(config)

    def blocks(self) -> list[nn.Module]:
        """The ViT layers in execution order (the memory manager's movable units)."""
        return list(self.main_image_encoder.model.encoder.layer)

    def forward(self, images: torch.Tensor, view_indices: list[int] | None = None) -> torch.Tensor:
        return self.main_image_encoder(images, view_indices)


def unconditional_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """The unconditional input of classifier-free guidance: zeros, class token included (not DINOv2 of a blank picture)."""
    return torch.zeros_like(tokens)

