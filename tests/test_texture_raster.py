"""The texture stage's rasterizer against trimesh ray casting, and the official view conventions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from trimesh.ray.ray_triangle import RayMeshIntersector

from backend.texture.raster import rasterize
from backend.texture.views import (
    FIT_DIAMETER,
    OFFICIAL_AZIMUTHS,
    OFFICIAL_ELEVATIONS,
    OrthoView,
    fit_to_views,
    official_views,
    render_view,
    vertex_normals,
)

RESOLUTION = 128


def occluding_scene() -> tuple[torch.Tensor, torch.Tensor]:
    """A sphere, a box in front of it and a thin upright cylinder beside it: overlaps and occlusion."""
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=1.0)
    box = trimesh.creation.box(extents=(0.8, 0.8, 0.8))
    box.apply_translation((0.6, 0.3, 0.9))
    cylinder = trimesh.creation.cylinder(radius=0.15, height=2.6, sections=24)
    cylinder.apply_translation((-0.7, 0.0, 0.5))
    mesh = trimesh.util.concatenate([sphere, box, cylinder])
    return fit_to_views(torch.tensor(mesh.vertices, dtype=torch.float32)), torch.tensor(mesh.faces)


def cast_view(mesh: trimesh.Trimesh, view: OrthoView, resolution: int):
    """Nearest hit of one ray per pixel centre: (covered, depth, face, location), flattened."""
    right, up, towards = (v.double().numpy() for v in view.basis())
    half = view.extent / 2
    col, row = np.meshgrid(np.arange(resolution), np.arange(resolution))
    x = (2 * col / (resolution - 1) - 1) * half
    y = (1 - 2 * row / (resolution - 1)) * half
    origins = (x[..., None] * right + y[..., None] * up + view.distance * towards).reshape(-1, 3)
    directions = np.broadcast_to(-towards, origins.shape)
    face, ray, location = RayMeshIntersector(mesh).intersects_id(origins, directions, multiple_hits=True,
                                                                 return_locations=True)
    distance = ((origins[ray] - location) * towards).sum(-1)
    order = np.lexsort((distance, ray))
    first = order[np.r_[True, ray[order][1:] != ray[order][:-1]]]
    covered = np.zeros(resolution * resolution, bool)
    covered[ray[first]] = True
    depth = np.zeros(resolution * resolution)
    depth[ray[first]] = distance[first]
    hit_face = np.full(resolution * resolution, -1)
    hit_face[ray[first]] = face[first]
    hit_location = np.zeros((resolution * resolution, 3))
    hit_location[ray[first]] = location[first]
    return covered, depth, hit_face, hit_location


@pytest.mark.parametrize("view_index", range(6))
def test_views_agree_with_ray_casting(view_index):
    positions, faces = occluding_scene()
    view = official_views()[view_index]
    maps = render_view(positions, faces, view, RESOLUTION)
    mesh = trimesh.Trimesh(positions.double().numpy(), faces.numpy(), process=False)
    covered, depth, hit_face, hit_location = cast_view(mesh, view, RESOLUTION)

    ours = maps.mask.numpy().reshape(-1)
    assert 0.2 < ours.mean() < 0.9, "the scene should fill part of the view, not none or all of it"
    assert (ours == covered).mean() >= 0.995
    both = ours & covered
    scene_size = float(np.linalg.norm(mesh.extents))
    depth_error = np.abs(maps.depth.numpy().reshape(-1)[both] - depth[both])
    assert depth_error.max() <= 1e-4 * scene_size
    position_error = np.abs(maps.position.numpy().reshape(-1, 3)[both] - hit_location[both])
    assert position_error.max() <= 1e-4 * scene_size
    assert (maps.raster.face_index.numpy().reshape(-1)[both] == hit_face[both]).mean() >= 0.99


def test_chunking_changes_nothing():
    positions, faces = occluding_scene()
    view = official_views()[0]
    whole = render_view(positions, faces, view, RESOLUTION)
    chunked = render_view(positions, faces, view, RESOLUTION, max_candidates=997)
    assert torch.equal(whole.raster.face_index, chunked.raster.face_index)
    assert torch.equal(whole.raster.barycentrics, chunked.raster.barycentrics)


def test_barycentrics_reproduce_pixel_centres():
    points = torch.tensor([[2.3, 1.1], [60.7, 5.2], [20.4, 50.9]])
    raster = rasterize(points, torch.tensor([[0, 1, 2]]), 64, 64)
    covered = raster.mask
    rows, cols = torch.nonzero(covered, as_tuple=True)
    rebuilt = raster.interpolate(points, torch.tensor([[0, 1, 2]]))[covered]
    assert torch.allclose(rebuilt, torch.stack([cols, rows], dim=-1).float(), atol=1e-3)
    assert 1000 < covered.sum() < 1500  # the triangle's area is about 1357 pixels


def test_official_view_set_and_orientation():
    views = official_views()
    assert [v.azimuth for v in views] == list(OFFICIAL_AZIMUTHS) == [0, 90, 180, 270, 0, 180]
    assert [v.elevation for v in views] == list(OFFICIAL_ELEVATIONS) == [0, 0, 0, 0, 90, -90]
    front, side, _, _, top, bottom = views
    marker = torch.tensor([[0.3, 0.2, 0.1]])

    def pixel(view):
        return view.project(marker, 101, 101)[0][0].tolist()

    col, row = pixel(front)
    assert col > 50 and row < 50, "front view: +X is to the right and +Y up"
    assert pixel(side)[0] < 50, "side view from +X: +Z is to the left"
    assert pixel(top)[1] > 50, "top view: the front (+Z) is at the bottom"
    assert pixel(bottom)[1] > 50, "bottom view (azimuth 180): the front (+Z) is at the bottom too"
    assert pixel(bottom)[0] < 50, "bottom view (azimuth 180): +X is to the left"
    assert torch.allclose(front.project(marker, 101, 101)[1], torch.tensor([1.45 - 0.1]))


def test_normal_and_position_images_use_the_official_encoding():
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=1.0)
    positions = fit_to_views(torch.tensor(sphere.vertices, dtype=torch.float32))
    faces = torch.tensor(sphere.faces)
    maps = render_view(positions, faces, official_views()[0], 65)
    centre = 32
    assert torch.allclose(maps.normal_image()[centre, centre], torch.tensor([0.5, 0.0, 0.5]), atol=0.02)
    assert torch.allclose(maps.position_image()[centre, centre],
                          torch.tensor([0.5, 0.5 - FIT_DIAMETER / 2 / FIT_DIAMETER, 0.5]), atol=0.02)
    assert torch.equal(maps.normal_image()[0, 0], torch.ones(3))
    normals = vertex_normals(positions, faces)
    outward = torch.nn.functional.normalize(positions, dim=-1)
    assert (normals * outward).sum(-1).min() > 0.99


def test_fit_to_views_matches_the_official_framing():
    positions = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 3.0], [1.0, 6.0, 5.0]])
    fitted = fit_to_views(positions)
    assert torch.allclose((fitted.amax(0) + fitted.amin(0)) / 2, torch.zeros(3), atol=1e-6)
    assert torch.isclose(torch.linalg.norm(fitted, dim=1).max(), torch.tensor(FIT_DIAMETER / 2))


def test_bad_input_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="triangulate"):
        rasterize(torch.zeros(4, 2), torch.zeros(1, 4, dtype=torch.long), 8, 8)
    with pytest.raises(ValueError, match=r"\[V, 2\]"):
        rasterize(torch.zeros(4, 3), torch.zeros(1, 3, dtype=torch.long), 8, 8)
    with pytest.raises(ValueError, match="no extent"):
        fit_to_views(torch.ones(5, 3))
