"""Hunyuan3D-1's multiview diffusion models, lite and std: one picture in, six views around it out."""

from .lite import LiteMultiview
from .model import MultiviewModel, MultiviewOutput, split_grid
from .std import StdMultiview

__all__ = ["LiteMultiview", "MultiviewModel", "MultiviewOutput", "StdMultiview", "split_grid"]
