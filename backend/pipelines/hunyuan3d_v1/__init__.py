"""Hunyuan3D-1 (Tencent): multiview diffusion and the SVRM sparse-view reconstruction model."""

# What every Hunyuan3D-1 part (HunyuanDiT, the multiview models, SVRM) is made to compute in on an
# accelerator, as upstream runs them, whatever dtype a released file is stored in.
PRECISION = "float16"
