"""Hunyuan3D-2 shape models: v2-0, mini and multiview, with their guidance-distilled (-fast) and step-distilled (-turbo) variants.

``vae`` is the decoder-only ShapeVAE; ``volume`` evaluates it over a grid (plain or FlashVDM's
coarse-to-fine decoding) and turns the grid into our Mesh.
"""
