"""Nano: a small picture-to-3D model of our own, trained on procedural shapes on a CPU.

``pipeline`` registers the ``nano`` pipeline and imports no torch at module level; the other
modules (shapes, renderer, data, model, training, evaluation) load torch when imported.
"""
