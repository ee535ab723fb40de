"""Triangle rasterization in PyTorch by per-face bounding-box scatter.

Each face enumerates the pixel centres inside its screen bounding box, keeps those inside the
triangle, and the nearest one per pixel wins through a single ``scatter_reduce`` on a key that packs
quantised depth above the face index. Faces are processed in chunks so no more than
``max_candidates`` (pixel, face) pairs exist at once, which bounds memory for any mesh size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_EMPTY = torch.iinfo(torch.int64).max
_DEPTH_LEVELS = 1 << 30  # depth keys stay below 2**62, clear of the sign bit after the shift
_INSIDE_TOLERANCE = 1e-6
# (pixel, face) pairs held at once: about 1 GB of temporaries on the CPU.
MAX_CANDIDATES = 1 << 22


@dataclass
class Raster:
    """Per-pixel result: ``face_index`` [H, W] (-1 where no face), ``barycentrics`` [H, W, 3]."""

    face_index: torch.Tensor
    barycentrics: torch.Tensor

    @property
    def mask(self) -> torch.Tensor:
        return self.face_index >= 0

    def interpolate(self, attributes: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
        """Interpolate per-vertex ``attributes`` [V, C] over the covered pixels; zeros elsewhere."""
        height, width = self.face_index.shape
        out = torch.zeros(height, width, attributes.shape[-1], dtype=attributes.dtype, device=attributes.device)
        covered = self.mask
        corners = attributes[faces[self.face_index[covered]]]  # [N, 3, C]
        weights = self.barycentrics[covered].to(attributes.dtype)
        out[covered] = (corners * weights.unsqueeze(-1)).sum(dim=1)
        return out


def _edge(a: torch.Tensor, b: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    return (b[..., 0] - a[..., 0]) * (p[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (p[..., 0] - a[..., 0])


def _affine_edge(a: torch.Tensor, b: torch.Tensor, inv_area: torch.Tensor) -> torch.Tensor:
    """Coefficients (x, y, 1) of ``_edge(a, b, p) / area`` as a function of p."""
    dx, dy = b[:, 0] - a[:, 0], b[:, 1] - a[:, 1]
    return torch.stack([-dy, dx, dy * a[:, 0] - dx * a[:, 1]], dim=-1) * inv_area.unsqueeze(-1)


def _barycentrics(corners: torch.Tensor, pixels: torch.Tensor, area: torch.Tensor) -> torch.Tensor:
    a, b, c = corners[:, 0], corners[:, 1], corners[:, 2]
    w0 = _edge(b, c, pixels) / area
    w1 = _edge(c, a, pixels) / area
    return torch.stack([w0, w1, 1.0 - w0 - w1], dim=-1)


def rasterize(points: torch.Tensor, faces: torch.Tensor, height: int, width: int,
              depth: torch.Tensor | None = None, max_candidates: int = MAX_CANDIDATES) -> Raster:
    """Rasterize triangles given in pixel coordinates.

    Args:
        points: [V, 2] float, (column, row) with pixel centres at integer coordinates.
        faces: [F, 3] integer vertex indices.
        height, width: image size in pixels.
        depth: [V] per-vertex depth, smaller is nearer; None keeps the lowest face index where faces
            overlap (UV layouts).
        max_candidates: most (pixel, face) pairs held at once; lower it to use less memory.
    """
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points must be [V, 2] pixel coordinates, got shape {tuple(points.shape)}")
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces must be [F, 3] vertex indices (triangulate the mesh first), got shape {tuple(faces.shape)}")
    if faces.shape[0] >= 1 << 32:
        raise ValueError(f"at most 2**32 - 1 faces can be rasterized, got {faces.shape[0]}")
    device = points.device
    faces = faces.to(device=device, dtype=torch.long)
    points = points.float()
    zbuffer = torch.full((height * width,), _EMPTY, dtype=torch.int64, device=device)

    corners = points[faces]  # [F, 3, 2]
    area = _edge(corners[:, 0], corners[:, 1], corners[:, 2])
    lo = corners.amin(dim=1).ceil()
    hi = corners.amax(dim=1).floor()
    x0 = lo[:, 0].clamp(0, width - 1).long()
    y0 = lo[:, 1].clamp(0, height - 1).long()
    box_w = (hi[:, 0].clamp(-1, width - 1).long() - x0 + 1).clamp(min=0)
    box_h = (hi[:, 1].clamp(-1, height - 1).long() - y0 + 1).clamp(min=0)
    box_w = torch.where(hi[:, 0] < lo[:, 0], torch.zeros_like(box_w), box_w)
    box_h = torch.where(hi[:, 1] < lo[:, 1], torch.zeros_like(box_h), box_h)
    count = box_w * box_h * (area.abs() > 1e-12)
    live = torch.nonzero(count > 0).squeeze(1)

    # Barycentrics (and depth) are affine in the pixel position; per face, the coefficients are taken
    # relative to the bounding box's corner so that small triangles far from the origin keep precision.
    origin = torch.stack([x0, y0], dim=-1).float()
    local = corners - origin.unsqueeze(1)
    a, b, c = local[:, 0], local[:, 1], local[:, 2]
    inv_area = 1.0 / torch.where(area == 0, torch.ones_like(area), area)
    rows = [_affine_edge(b, c, inv_area), _affine_edge(c, a, inv_area)]
    if depth is not None:
        depth = depth.to(device=device, dtype=torch.float32)
        d_min, d_max = depth.min(), depth.max()
        z = (depth[faces] - d_min) * (_DEPTH_LEVELS / torch.clamp(d_max - d_min, min=1e-12))
        depth_row = rows[0] * (z[:, 0:1] - z[:, 2:3]) + rows[1] * (z[:, 1:2] - z[:, 2:3])
        depth_row[:, 2] += z[:, 2]
        rows.append(depth_row)
    coefficients = torch.stack(rows, dim=1)  # [F, 2 or 3, (x, y, 1)]
    placement = torch.stack([y0 * width + x0, box_w], dim=-1)

    ends = torch.cumsum(count[live], dim=0)
    start = 0
    while start < live.numel():
        base = ends[start - 1] if start > 0 else ends.new_zeros(())
        stop = max(int(torch.searchsorted(ends, base + max_candidates, right=True)), start + 1)
        ids = live[start:stop]
        start = stop
        counts = count[ids]
        owner = torch.repeat_interleave(torch.arange(ids.numel(), device=device), counts)
        offset = torch.arange(owner.numel(), device=device) - (torch.cumsum(counts, 0) - counts)[owner]
        face = ids[owner]
        corner_flat, box_width = placement[face].unbind(-1)
        ly = torch.div(offset, box_width, rounding_mode="floor")
        lx = offset - ly * box_width
        co = coefficients[face]
        values = co[..., 0] * lx.unsqueeze(-1) + co[..., 1] * ly.unsqueeze(-1) + co[..., 2]
        w0, w1 = values[:, 0], values[:, 1]
        inside = (w0 >= -_INSIDE_TOLERANCE) & (w1 >= -_INSIDE_TOLERANCE) & (w0 + w1 <= 1 + _INSIDE_TOLERANCE)
        key = face[inside]
        if depth is not None:
            key = (values[inside, 2].clamp(0, _DEPTH_LEVELS).long() << 32) | key
        zbuffer.scatter_reduce_(0, (corner_flat + ly * width + lx)[inside], key, reduce="amin")

    covered = zbuffer != _EMPTY
    face_index = torch.full((height * width,), -1, dtype=torch.long, device=device)
    winner = zbuffer[covered] & 0xFFFFFFFF
    face_index[covered] = winner
    barycentrics = torch.zeros(height * width, 3, dtype=torch.float32, device=device)
    flat = torch.nonzero(covered).squeeze(1)
    pixel = torch.stack([flat % width, torch.div(flat, width, rounding_mode="floor")], dim=-1).float()
    bary = _barycentrics(corners[winner], pixel, area[winner]).clamp(min=0)
    barycentrics[covered] = bary / bary.sum(dim=-1, keepdim=True)
    return Raster(face_index.view(height, width), barycentrics.view(height, width, 3))
