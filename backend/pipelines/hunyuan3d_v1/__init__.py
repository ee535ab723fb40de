"""Hunyuan3D-1 (Tencent): multiview diffusion and the SVRM sparse-view reconstruction model."""
