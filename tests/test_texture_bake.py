"""UV unwrap, UV raster, bake and fill of the texture stage, against a mesh with a known texture."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import trimesh
from addon_support import TESTS

from backend.texture.bake import bake_views, fill_texture, push_pull_fill, spread_vertex_colours
from backend.texture.uv import check_mesh, rasterize_uv, unwrap
from backend.texture.views import OrthoView, fit_to_views, official_views, render_view, vertex_normals

TEXTURE_SIZE = 256
VIEW_SIZE = 256


def known_colour(position: torch.Tensor) -> torch.Tensor:
    """A smooth colour field over space: the mesh's known texture is this field on its surface."""
    phase = torch.stack([3 * position[..., 0] + 0.3, 4 * position[..., 1] + 1.0, 5 * position[..., 2] - 0.5], dim=-1)
    return 0.5 + 0.4 * torch.sin(phase)


def textured_scene():
    """A sphere with a box pushed into its front: concave corners, occlusion, flat and curved parts."""
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=1.0)
    box = trimesh.creation.box(extents=(0.8, 0.8, 0.8))
    box.apply_translation((0.6, 0.3, 0.9))
    mesh = trimesh.util.concatenate([sphere, box])
    positions = fit_to_views(torch.tensor(mesh.vertices, dtype=torch.float32))
    faces = torch.tensor(mesh.faces)
    normals = vertex_normals(positions, faces)
    uv_mesh = unwrap(positions.numpy(), faces.numpy(), texture_size=TEXTURE_SIZE)
    source = torch.from_numpy(uv_mesh.source_vertex)
    texels = rasterize_uv(torch.from_numpy(uv_mesh.positions), torch.from_numpy(uv_mesh.faces),
                          torch.from_numpy(uv_mesh.uvs), normals[source], TEXTURE_SIZE)
    return positions, faces, normals, uv_mesh, texels


@pytest.fixture(scope="module")
def scene():
    return textured_scene()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


def test_unwrap_keeps_every_face_and_vertex(scene):
    positions, faces, _, uv_mesh, texels = scene
    assert uv_mesh.faces.shape == faces.shape
    assert np.array_equal(uv_mesh.positions, positions.numpy()[uv_mesh.source_vertex])
    assert np.array_equal(uv_mesh.source_vertex[uv_mesh.faces], faces.numpy()), "faces keep their corners and order"
    assert uv_mesh.uvs.min() >= 0 and uv_mesh.uvs.max() <= 1
    assert 0.4 < texels.mask.float().mean() < 0.95, "charts should fill most of the texture"


def test_unwrap_leaves_the_interpreter_free_and_stops_at_a_cancel():
    """xatlas holds the interpreter lock for its whole run, so it runs in a child process: the job's
    cancel check is polled while it works, and a cancel stops the child at once."""
    import multiprocessing

    from backend.errors import JobCancelled

    sphere = trimesh.creation.icosphere(subdivisions=5)  # 20,480 faces: seconds of xatlas
    polls = []

    def check_cancelled():
        polls.append(1)
        if len(polls) == 3:
            raise JobCancelled()

    with pytest.raises(JobCancelled):
        unwrap(sphere.vertices.astype(np.float32), sphere.faces, texture_size=1024, check_cancelled=check_cancelled)
    assert len(polls) == 3 and not multiprocessing.active_children()


def test_uv_raster_places_each_texel_on_its_face(scene):
    _, _, _, uv_mesh, texels = scene
    covered = texels.mask
    rows, cols = torch.nonzero(covered, as_tuple=True)
    uv = texels.raster.interpolate(torch.from_numpy(uv_mesh.uvs), torch.from_numpy(uv_mesh.faces))[covered]
    expected = torch.stack([(cols + 0.5) / TEXTURE_SIZE, 1 - (rows + 0.5) / TEXTURE_SIZE], dim=-1)
    assert torch.allclose(uv, expected, atol=1e-5)
    corners = torch.from_numpy(uv_mesh.positions)[torch.from_numpy(uv_mesh.faces)[texels.raster.face_index[covered]]]
    lo, hi = corners.amin(dim=1), corners.amax(dim=1)
    position = texels.position[covered]
    assert ((position >= lo - 1e-5) & (position <= hi + 1e-5)).all()


def render_known_views(positions, faces, normals, views, size):
    images = []
    for view in views:
        maps = render_view(positions, faces, view, size, normals=normals)
        images.append(torch.where(maps.mask.unsqueeze(-1), known_colour(maps.position), torch.ones(3)))
    return images


def test_bake_recovers_a_known_texture_from_six_views(scene):
    positions, faces, normals, _, texels = scene
    views = official_views()
    images = render_known_views(positions, faces, normals, views, VIEW_SIZE)
    bake = bake_views(texels, positions, faces, views, images)
    seen = bake.seen
    assert seen.sum() >= 0.8 * texels.mask.sum()
    assert not (seen & ~texels.mask).any()
    truth = known_colour(texels.position)
    assert psnr(bake.texture[seen], truth[seen]) >= 30


def test_bake_recovers_a_known_texture_rendered_by_blender(scene, tmp_path):
    """The issue's check: views of a textured mesh rendered by Blender (Cycles), baked back by us."""
    positions, faces, normals, uv_mesh, texels = scene
    truth = known_colour(texels.position)
    texture = push_pull_fill(truth * texels.mask.unsqueeze(-1), texels.mask)  # bleed so filtering sees no black
    views = official_views()
    np.savez(tmp_path / "scene.npz", positions=uv_mesh.positions, faces=uv_mesh.faces, uvs=uv_mesh.uvs,
             texture=texture.numpy(), views=np.array([[v.azimuth, v.elevation, v.distance, v.extent, VIEW_SIZE] for v in views]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLENDER_")}
    env["BLENDER_USER_RESOURCES"] = str(tmp_path / "blender-user")
    done = subprocess.run([sys.executable, str(TESTS / "texture_blender_render.py"), str(tmp_path / "scene.npz"),
                           str(tmp_path / "views.npz")], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    rendered = np.load(tmp_path / "views.npz")["images"]
    assert rendered.shape == (6, VIEW_SIZE, VIEW_SIZE, 4)
    for view, image in zip(views, rendered):
        ours = render_view(positions, faces, view, VIEW_SIZE, normals=normals).mask.numpy()
        assert (ours == (image[..., 3] > 0.5)).mean() >= 0.995, f"silhouettes differ in view {view}"
    images = [torch.from_numpy(np.ascontiguousarray(image[..., :3])) for image in rendered]
    bake = bake_views(texels, positions, faces, views, images)
    seen = bake.seen
    assert seen.sum() >= 0.8 * texels.mask.sum()
    assert psnr(bake.texture[seen], truth[seen]) >= 30


def test_bake_weight_is_view_weight_times_cosine_to_the_fourth():
    sphere = trimesh.creation.icosphere(subdivisions=5, radius=1.0)
    positions = fit_to_views(torch.tensor(sphere.vertices, dtype=torch.float32))
    faces = torch.tensor(sphere.faces)
    normals = vertex_normals(positions, faces)
    uv_mesh = unwrap(positions.numpy(), faces.numpy(), texture_size=TEXTURE_SIZE)
    texels = rasterize_uv(torch.from_numpy(uv_mesh.positions), torch.from_numpy(uv_mesh.faces),
                          torch.from_numpy(uv_mesh.uvs), normals[torch.from_numpy(uv_mesh.source_vertex)], TEXTURE_SIZE)
    front = OrthoView(0, 0, weight=0.5)
    image = torch.full((VIEW_SIZE, VIEW_SIZE, 3), 0.25)
    bake = bake_views(texels, positions, faces, [front], [image])
    cos = texels.normal[..., 2]
    inner = texels.mask & (cos > math.cos(math.radians(60)))
    assert torch.allclose(bake.weight[inner], 0.5 * cos[inner] ** 4, atol=1e-5)
    assert not bake.seen[texels.mask & (cos < math.cos(math.radians(75)))].any()
    assert torch.allclose(bake.texture[bake.seen], torch.tensor(0.25))


def test_texels_outside_a_view_frame_are_not_seen(scene):
    positions, faces, normals, _, texels = scene
    narrow = OrthoView(0, 0, extent=0.5)
    bake = bake_views(texels, positions, faces, [narrow], render_known_views(positions, faces, normals, [narrow], VIEW_SIZE))
    right, up, _ = narrow.basis()
    across = torch.stack([texels.position @ right, texels.position @ up], dim=-1).abs().amax(dim=-1)
    assert bake.seen.any() and (texels.mask & (across > 0.3)).any()
    assert not bake.seen[across > 0.25 + 0.5 / VIEW_SIZE].any()


def test_fill_keeps_seen_texels_and_fills_the_rest_from_them(scene):
    positions, faces, normals, _, texels = scene
    views = official_views()[:1]
    images = render_known_views(positions, faces, normals, views, VIEW_SIZE)
    bake = bake_views(texels, positions, faces, views, images)
    filled = push_pull_fill(bake.texture, bake.seen)
    assert torch.equal(filled[bake.seen], bake.texture[bake.seen])
    unseen = ~bake.seen
    seen_colours = bake.texture[bake.seen]
    assert (filled[unseen] >= seen_colours.amin(0) - 1e-6).all() and (filled[unseen] <= seen_colours.amax(0) + 1e-6).all()


def test_mesh_fill_beats_texture_space_fill_where_no_view_looked(scene):
    positions, faces, normals, uv_mesh, texels = scene
    views = official_views()[:1]
    bake = bake_views(texels, positions, faces, views, render_known_views(positions, faces, normals, views, VIEW_SIZE))
    unseen = texels.mask & ~bake.seen
    truth = known_colour(texels.position)
    filled = fill_texture(bake, texels, uv_mesh)
    assert torch.equal(filled[bake.seen], bake.texture[bake.seen])
    assert psnr(filled[unseen], truth[unseen]) > psnr(push_pull_fill(bake.texture, bake.seen)[unseen], truth[unseen]) + 1


def test_vertex_colours_spread_ring_by_ring():
    strip = torch.tensor([[0, 1, 2], [1, 3, 2], [2, 3, 4], [3, 5, 4]])  # vertex 0 at one end, 5 at the other
    colours = torch.zeros(6, 1)
    colours[0] = 1.0
    known = torch.zeros(6, dtype=torch.bool)
    known[0] = True
    spread, reached = spread_vertex_colours(colours, known, strip)
    assert reached.all() and torch.allclose(spread, torch.ones(6, 1))
    colours[5], known[5] = 0.0, True
    spread, _ = spread_vertex_colours(colours, known, strip)
    assert spread.view(-1).tolist() == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0], "each vertex takes its nearest known ring"
    spread, _ = spread_vertex_colours(torch.tensor([[1.0], [0.0], [7.0]]), torch.tensor([True, True, False]),
                                      torch.tensor([[0, 1, 2]]))
    assert spread[2] == 0.5, "the mean of the known neighbours"


def test_fill_of_a_constant_texture_is_that_constant():
    known = torch.zeros(37, 53, dtype=torch.bool)
    known[5, 7] = known[30, 40] = True
    texture = torch.zeros(37, 53, 3)
    texture[known] = torch.tensor([0.2, 0.4, 0.6])
    assert torch.allclose(push_pull_fill(texture, known), torch.tensor([0.2, 0.4, 0.6]).expand(37, 53, 3))


def test_bad_input_is_refused_with_the_fix(scene):
    positions, faces, normals, _, texels = scene
    with pytest.raises(ValueError, match="NaN"):
        check_mesh(np.array([[0, 0, 0], [1, 0, 0], [0, np.nan, 0]]), np.array([[0, 1, 2]]))
    with pytest.raises(ValueError, match="must lie in"):
        check_mesh(np.zeros((3, 3)), np.array([[0, 1, 3]]))
    with pytest.raises(ValueError, match="triangulate"):
        check_mesh(np.zeros((4, 3)), np.array([[0, 1, 2, 3]]))
    with pytest.raises(ValueError, match="one image per view"):
        bake_views(texels, positions, faces, official_views(), [torch.zeros(8, 8, 3)])
    with pytest.raises(ValueError, match="at least one"):
        bake_views(texels, positions, faces, [], [])
    with pytest.raises(ValueError, match=r"\[H, H, 3\]"):
        bake_views(texels, positions, faces, official_views()[:1], [torch.zeros(8, 6, 3)])
    with pytest.raises(ValueError, match="nothing to fill"):
        push_pull_fill(torch.zeros(4, 4, 3), torch.zeros(4, 4, dtype=torch.bool))
