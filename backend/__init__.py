"""Hunyuan3D for Blender: the inference backend. Run as ``python -m backend``."""

__version__ = "0.1.0"
SERVER_NAME = "hunyuan3d-blender-backend"
