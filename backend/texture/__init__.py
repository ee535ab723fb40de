"""Geometry of the texture stage: rasterizer, camera views, UV unwrap, bake and fill.

Pure PyTorch (plus xatlas for unwrapping and OpenCV for inpainting): nothing to compile, runs on any
device PyTorch runs on. docs/texture.md describes the conventions and how each part is tested.
"""
