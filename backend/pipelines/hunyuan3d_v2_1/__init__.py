"""Hunyuan3D-2.1 shape generation: its DiT (long skips, mixture-of-experts feed-forwards), checkpoint loading and pipeline.

The image conditioner, scheduler, ShapeVAE, volume decoding and the pipeline's steps are
Hunyuan3D-2's, shared with that family (``pipeline.py`` subclasses its pipeline);
docs/hunyuan3d_v2_1.md says what differs and what is done.
"""

from .config import DiT21Config
from .dit import HunyuanDiT21, load_dit
from .moe import ExpertTraffic, MoEFeedForward

__all__ = ["DiT21Config", "ExpertTraffic", "HunyuanDiT21", "MoEFeedForward", "load_dit"]
