"""Hunyuan3D-2 shape models: v2-0, mini and multiview, with their guidance-distilled (-fast) and step-distilled (-turbo) variants."""
