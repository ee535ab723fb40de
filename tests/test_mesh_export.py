"""GLB, OBJ and PLY written by backend.mesh.export read back with trimesh, and the wire form round trip."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from backend.colors import srgb_to_linear
from backend.mesh import Material, Mesh
from backend.mesh.export import encode, save


def tetrahedron(colors: bool = True, normals: bool = False) -> Mesh:
    positions = np.array([[0.1, 0.2, 0.3], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    faces = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], dtype=np.int32)
    rgba = np.array([[255, 0, 0, 255], [0, 255, 0, 255], [0, 0, 255, 255], [10, 20, 30, 255]], dtype=np.uint8)
    unit = positions / np.linalg.norm(positions, axis=1, keepdims=True)
    return Mesh(positions, faces, colors=rgba if colors else None, normals=unit if normals else None)


def stored_colors(mesh: Mesh, suffix: str) -> np.ndarray:
    """8-bit colours as a reader sees them: linear in GLB (glTF's rule), sRGB in OBJ and PLY."""
    if suffix == ".glb":
        return np.round(srgb_to_linear(mesh.colors_float()) * 255).astype(int)
    return mesh.colors_uint8().astype(int)


def read(path) -> trimesh.Trimesh:
    loaded = trimesh.load(path, process=False, force="mesh")
    assert isinstance(loaded, trimesh.Trimesh)
    return loaded


@pytest.mark.parametrize("suffix", [".glb", ".obj", ".ply"])
def test_round_trip_positions_faces_colours(tmp_path, suffix):
    mesh = tetrahedron()
    loaded = read(save(mesh, tmp_path / f"mesh{suffix}"))
    np.testing.assert_allclose(loaded.vertices, mesh.positions, atol=1e-6)
    np.testing.assert_array_equal(loaded.faces, mesh.faces)
    np.testing.assert_allclose(loaded.visual.vertex_colors.astype(int), stored_colors(mesh, suffix), atol=1)


def test_round_trip_normals(tmp_path):
    # trimesh recomputes Trimesh.vertex_normals from the faces, so read the stored arrays themselves.
    from trimesh.exchange.gltf import load_glb

    mesh = tetrahedron(normals=True)
    with open(save(mesh, tmp_path / "mesh.glb"), "rb") as f:
        (primitive,) = load_glb(f)["geometry"].values()
    np.testing.assert_allclose(primitive["vertex_normals"], mesh.normals, atol=1e-7)
    ply = read(save(mesh, tmp_path / "mesh.ply")).metadata["_ply_raw"]["vertex"]["data"]
    np.testing.assert_allclose(np.stack([ply["nx"], ply["ny"], ply["nz"]], axis=1), mesh.normals, atol=1e-7)


@pytest.mark.parametrize("suffix", [".glb", ".obj", ".ply"])
def test_round_trip_without_colours(tmp_path, suffix):
    mesh = tetrahedron(colors=False)
    loaded = read(save(mesh, tmp_path / f"mesh{suffix}"))
    np.testing.assert_allclose(loaded.vertices, mesh.positions, atol=1e-6)
    np.testing.assert_array_equal(loaded.faces, mesh.faces)


def test_float_colours_are_quantised_the_same_in_every_format(tmp_path):
    rng = np.random.default_rng(1)
    base = tetrahedron(colors=False)
    mesh = Mesh(base.positions, base.faces, colors=rng.random((4, 3), dtype=np.float32))
    for suffix in (".glb", ".obj", ".ply"):
        loaded = read(save(mesh, tmp_path / f"mesh{suffix}"))
        np.testing.assert_allclose(loaded.visual.vertex_colors.astype(int), stored_colors(mesh, suffix), atol=1, err_msg=suffix)


def test_glb_bounds_and_layout(tmp_path):
    data = encode(tetrahedron(), "glb")
    _, version, total = np.frombuffer(data[:12], dtype="<u4")
    assert data[:4] == b"glTF" and version == 2 and total == len(data)
    scene = trimesh.load(save(tetrahedron(), tmp_path / "x.glb"), process=False)
    np.testing.assert_allclose(scene.bounds, [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])


def test_unknown_format_is_refused_and_nothing_is_written(tmp_path):
    with pytest.raises(ValueError, match="unknown mesh format"):
        save(tetrahedron(), tmp_path / "mesh.stl")
    assert list(tmp_path.iterdir()) == []


def test_save_replaces_atomically_without_leftovers(tmp_path):
    target = tmp_path / "out" / "mesh.ply"
    save(tetrahedron(), target)
    save(tetrahedron(colors=False), target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["mesh.ply"]
    assert read(target).visual.kind != "vertex"


def test_wire_buffers_round_trip():
    mesh = tetrahedron(normals=True)
    buffers = {b.name: b for b in mesh.to_buffers()}
    back = Mesh.from_buffers(buffers)
    np.testing.assert_array_equal(back.positions, mesh.positions)
    np.testing.assert_array_equal(back.faces, mesh.faces)
    np.testing.assert_array_equal(back.colors, mesh.colors)
    np.testing.assert_array_equal(back.normals, mesh.normals)


def test_extracted_mesh_round_trips(tmp_path):
    import torch

    from backend.mesh import extract_mesh

    mesh = extract_mesh(lambda p: torch.linalg.norm(p, dim=1) - 0.3, lambda p: (p + 0.6) / 1.2, resolution=32, max_faces=500)
    for suffix in (".glb", ".obj", ".ply"):
        loaded = read(save(mesh, tmp_path / f"mesh{suffix}"))
        np.testing.assert_allclose(loaded.vertices, mesh.positions, atol=1e-5, err_msg=suffix)
        np.testing.assert_array_equal(loaded.faces, mesh.faces, err_msg=suffix)
        np.testing.assert_allclose(loaded.visual.vertex_colors.astype(int), stored_colors(mesh, suffix), atol=1, err_msg=suffix)


def textured_tetrahedron() -> Mesh:
    plain = tetrahedron(colors=False)
    texture = np.zeros((16, 32, 3), dtype=np.uint8)
    texture[:8] = (250, 20, 20)  # top half red, bottom half blue
    texture[8:] = (20, 20, 250)
    uvs = np.array([[0.1, 0.9], [0.9, 0.9], [0.1, 0.1], [0.9, 0.1]], dtype=np.float32)
    return Mesh(plain.positions, plain.faces, uvs=uvs, material=Material(base_color=texture))


def test_textured_mesh_glb_has_uvs_and_a_base_color_texture(tmp_path):
    mesh = textured_tetrahedron()
    loaded = read(save(mesh, tmp_path / "textured.glb"))
    assert isinstance(loaded.visual, trimesh.visual.TextureVisuals)
    np.testing.assert_allclose(loaded.visual.uv, mesh.uvs, atol=1e-6)  # trimesh turns glTF's v back up
    image = np.asarray(loaded.visual.material.baseColorTexture.convert("RGB"))
    np.testing.assert_array_equal(image, mesh.material.base_color)
    # v = 0.9 samples the red top of the picture, as Blender and glTF viewers do.
    colour = loaded.visual.material.to_color(loaded.visual.uv)
    assert (colour[:2, 0] > 200).all() and (colour[2:, 2] > 200).all()
    with pytest.raises(ValueError, match="a textured mesh is written as .glb"):
        save(mesh, tmp_path / "textured.obj")


def test_textured_wire_buffers_round_trip():
    mesh = textured_tetrahedron()
    buffers = {b.name: b for b in mesh.to_buffers()}
    assert buffers["texture.base_color"].dtype == "|u1" and bytes(buffers["texture.base_color"].data[:4]) == b"\x89PNG"
    back = Mesh.from_buffers(buffers)
    np.testing.assert_array_equal(back.uvs, mesh.uvs)
    np.testing.assert_array_equal(back.material.base_color, mesh.material.base_color)
    assert back.colors is None and back.textures() == ["base_color"]
    with pytest.raises(ValueError, match="needs uvs"):
        Mesh(mesh.positions, mesh.faces, material=mesh.material)
