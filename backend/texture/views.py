"""The official six orthographic views and the per-view maps rendered from them.

Coordinates are the mesh's own (glTF, +Y up, front facing +Z). A view at azimuth ``a`` and elevation
``e`` looks at the origin from the direction (cos e sin a, sin e, cos e cos a): azimuth 0 is the front,
90 the +X side, elevation 90 the top. Its image up is the derivative of that direction by elevation,
so the top and bottom views are oriented as hy3dgen 2.0.2 orients them (checked against its camera
matrices). Pixel centres span the orthographic window edge to edge: column ``c`` of ``W`` sits at
``(2c / (W - 1) - 1) * extent / 2``, as the official rasterizer maps clip space to pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .raster import MAX_CANDIDATES, Raster, rasterize

OFFICIAL_AZIMUTHS = (0, 90, 180, 270, 0, 180)
OFFICIAL_ELEVATIONS = (0, 0, 0, 0, 90, -90)
OFFICIAL_VIEW_WEIGHTS = (1.0, 0.1, 0.5, 0.1, 0.05, 0.05)
# hy3dgen's MeshRender: the mesh is scaled to a sphere of this diameter, seen from this distance
# through an orthographic window this wide.
FIT_DIAMETER = 1.15
CAMERA_DISTANCE = 1.45
ORTHO_EXTENT = 1.2


@dataclass(frozen=True)
class OrthoView:
    azimuth: float
    elevation: float
    weight: float = 1.0
    distance: float = CAMERA_DISTANCE
    extent: float = ORTHO_EXTENT

    def basis(self, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(right, up, towards_camera) unit vectors in mesh coordinates."""
        a, e = math.radians(self.azimuth), math.radians(self.elevation)
        towards = torch.tensor([math.cos(e) * math.sin(a), math.sin(e), math.cos(e) * math.cos(a)], device=device)
        up = torch.tensor([-math.sin(e) * math.sin(a), math.cos(e), -math.sin(e) * math.cos(a)], device=device)
        right = torch.linalg.cross(-towards, up)
        return right, up, towards

    def project(self, positions: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel coordinates [N, 2] (column, row) and depth [N] (distance in front of the camera)."""
        right, up, towards = (v.to(positions.dtype) for v in self.basis(positions.device))
        half = self.extent / 2
        column = (positions @ right / half + 1) * 0.5 * (width - 1)
        row = (1 - positions @ up / half) * 0.5 * (height - 1)
        return torch.stack([column, row], dim=-1), self.distance - positions @ towards

    def pixel_size(self, height: int) -> float:
        return self.extent / (height - 1)


def official_views() -> list[OrthoView]:
    return [OrthoView(a, e, w) for a, e, w in zip(OFFICIAL_AZIMUTHS, OFFICIAL_ELEVATIONS, OFFICIAL_VIEW_WEIGHTS)]


def fit_to_views(positions: torch.Tensor) -> torch.Tensor:
    """Centre the bounding box at the origin and scale the farthest vertex to ``FIT_DIAMETER / 2``."""
    centre = (positions.amax(dim=0) + positions.amin(dim=0)) / 2
    radius = torch.linalg.norm(positions - centre, dim=1).max()
    if not torch.isfinite(radius) or radius <= 0:
        raise ValueError("the mesh has no extent (all vertices coincide or are not finite); send a real mesh")
    return (positions - centre) * (FIT_DIAMETER / (2 * radius))


def vertex_normals(positions: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Unit normals per vertex: the mean of the unit normals of the faces around it."""
    corners = positions[faces]
    face_normals = torch.nn.functional.normalize(
        torch.linalg.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), dim=-1)
    summed = torch.zeros_like(positions).index_add_(0, faces.reshape(-1), face_normals.repeat_interleave(3, dim=0))
    return torch.nn.functional.normalize(summed, dim=-1)


@dataclass
class ViewMaps:
    """One view of a mesh: raster plus per-pixel depth, position and unit normal (zeros off the mesh)."""

    raster: Raster
    depth: torch.Tensor      # [H, W]
    position: torch.Tensor   # [H, W, 3] mesh coordinates
    normal: torch.Tensor     # [H, W, 3] interpolated vertex normal, renormalised

    @property
    def mask(self) -> torch.Tensor:
        return self.raster.mask

    def normal_image(self) -> torch.Tensor:
        """The paint model's normal condition: hy3dgen's world-normal colours, white background."""
        n = self.normal
        encoded = (torch.stack([n[..., 0], -n[..., 2], n[..., 1]], dim=-1) + 1) / 2
        return torch.where(self.mask.unsqueeze(-1), encoded, torch.ones_like(encoded))

    def position_image(self) -> torch.Tensor:
        """The paint model's position condition (mesh fitted with ``fit_to_views``), white background."""
        p = self.position / FIT_DIAMETER
        encoded = torch.stack([0.5 + p[..., 0], 0.5 - p[..., 2], 0.5 + p[..., 1]], dim=-1)
        return torch.where(self.mask.unsqueeze(-1), encoded, torch.ones_like(encoded))


def render_depth(positions: torch.Tensor, faces: torch.Tensor, view: OrthoView, resolution: int,
                 max_candidates: int = MAX_CANDIDATES) -> tuple[Raster, torch.Tensor]:
    """Rasterize one view at ``resolution`` squared: the raster and the depth map [H, W]."""
    faces = faces.to(device=positions.device, dtype=torch.long)
    points, depth = view.project(positions, resolution, resolution)
    raster = rasterize(points, faces, resolution, resolution, depth=depth, max_candidates=max_candidates)
    return raster, raster.interpolate(depth.unsqueeze(-1), faces)[..., 0]


def render_view(positions: torch.Tensor, faces: torch.Tensor, view: OrthoView, resolution: int,
                normals: torch.Tensor | None = None, max_candidates: int = MAX_CANDIDATES) -> ViewMaps:
    """Rasterize one view of a mesh (positions [V, 3], faces [F, 3]) at ``resolution`` squared."""
    faces = faces.to(device=positions.device, dtype=torch.long)
    raster, depth = render_depth(positions, faces, view, resolution, max_candidates=max_candidates)
    if normals is None:
        normals = vertex_normals(positions, faces)
    normal = torch.nn.functional.normalize(raster.interpolate(normals, faces), dim=-1)
    return ViewMaps(raster, depth, raster.interpolate(positions, faces), normal)
