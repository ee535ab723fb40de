"""Render views of a UV-textured mesh with Blender's Cycles (the bpy wheel), for the bake test.

Run in its own process: ``python texture_blender_render.py SCENE.npz OUT.npz``. SCENE holds
positions [V, 3], faces [F, 3], uvs [V, 2], texture [S, S, 3] (row 0 at the top), views [N, 5]
(azimuth, elevation, distance, extent, resolution). The mesh shows its texture as emission, no
lighting, linear colour, so each pixel is the texture as the camera sees it. OUT holds images
[N, H, W, 4] (row 0 at the top, alpha = coverage).
"""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path

import bpy
import numpy as np
from mathutils import Matrix


def textured_object(positions, faces, uvs, texture):
    mesh = bpy.data.meshes.new("known")
    mesh.from_pydata(positions.tolist(), [], faces.tolist())
    layer = mesh.uv_layers.new(name="UVMap")
    layer.data.foreach_set("uv", uvs[faces].reshape(-1).astype(np.float32))
    size = texture.shape[0]
    image = bpy.data.images.new("known", size, size, alpha=True, float_buffer=True)
    image.colorspace_settings.name = "Non-Color"
    rgba = np.concatenate([texture, np.ones((size, size, 1))], axis=-1)[::-1]  # Blender stores rows bottom first
    image.pixels.foreach_set(np.ascontiguousarray(rgba, dtype=np.float32).reshape(-1))
    material = bpy.data.materials.new("known")
    nodes, links = material.node_tree.nodes, material.node_tree.links
    nodes.clear()
    tex = nodes.new("ShaderNodeTexImage")
    tex.image = image
    tex.interpolation = "Linear"
    tex.extension = "EXTEND"
    emission = nodes.new("ShaderNodeEmission")
    output = nodes.new("ShaderNodeOutputMaterial")
    links.new(tex.outputs["Color"], emission.inputs["Color"])
    links.new(emission.outputs["Emission"], output.inputs["Surface"])
    mesh.materials.append(material)
    obj = bpy.data.objects.new("known", mesh)
    bpy.context.scene.collection.objects.link(obj)


def view_matrix(azimuth, elevation, distance):
    """World-from-camera: the same basis as backend.texture.views.OrthoView (camera looks down -Z)."""
    a, e = math.radians(azimuth), math.radians(elevation)
    towards = np.array([math.cos(e) * math.sin(a), math.sin(e), math.cos(e) * math.cos(a)])
    up = np.array([-math.sin(e) * math.sin(a), math.cos(e), -math.sin(e) * math.cos(a)])
    right = np.cross(-towards, up)
    matrix = np.eye(4)
    matrix[:3, 0], matrix[:3, 1], matrix[:3, 2], matrix[:3, 3] = right, up, towards, towards * distance
    return Matrix(matrix.tolist())


def main() -> None:
    scene_path, out_path = sys.argv[1], sys.argv[2]
    data = np.load(scene_path)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    textured_object(data["positions"], data["faces"], data["uvs"], data["texture"])
    scene.world = bpy.data.worlds.new("black")
    scene.world.color = (0, 0, 0)
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = 16
    scene.cycles.use_denoising = False
    scene.cycles.max_bounces = 0
    scene.cycles.filter_width = 0.01
    scene.render.film_transparent = True
    scene.view_settings.view_transform = "Standard"
    scene.render.image_settings.file_format = "OPEN_EXR"
    scene.render.image_settings.color_mode = "RGBA"
    camera_data = bpy.data.cameras.new("view")
    camera_data.type = "ORTHO"
    camera = bpy.data.objects.new("view", camera_data)
    scene.collection.objects.link(camera)
    scene.camera = camera
    images = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, (azimuth, elevation, distance, extent, resolution) in enumerate(data["views"]):
            resolution = int(resolution)
            scene.render.resolution_x = scene.render.resolution_y = resolution
            scene.render.resolution_percentage = 100
            # Our pixel centres span the extent edge to edge; Blender's image edges do.
            camera_data.ortho_scale = float(extent) * resolution / (resolution - 1)
            camera_data.clip_start, camera_data.clip_end = 0.01, 10.0
            camera.matrix_world = view_matrix(azimuth, elevation, distance)
            scene.render.filepath = str(Path(tmp) / f"view{index}.exr")
            bpy.ops.render.render(write_still=True)
            loaded = bpy.data.images.load(scene.render.filepath)
            pixels = np.empty(resolution * resolution * 4, dtype=np.float32)
            loaded.pixels.foreach_get(pixels)
            images.append(pixels.reshape(resolution, resolution, 4)[::-1])
    np.savez(out_path, images=np.stack(images))


if __name__ == "__main__":
    main()
