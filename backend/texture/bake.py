"""Bake view images into a UV texture, and fill the texels no view saw.

For every texel the bake looks up each view (nearest depth sample for visibility, bilinear colour)
and blends with hy3dgen 2.0.2's weight: ``view_weight * cos ** 4``, where cos is between the
interpolated vertex normal and the direction to the camera and counts as 0 beyond 75 degrees. As
there, view pixels within ``int(2 / 512 * resolution)`` pixels of the silhouette or of a depth
jump are not trusted, and a view whose texels are more than 99% painted by earlier views is skipped.
The official bake scatters view pixels into texels; this one gathers from texels into views, so no
texel that a view sees is left with a hole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .uv import TexelMaps, UVMesh, uv_to_pixels
from .views import OrthoView, render_depth

BAKE_EXPONENT = 4
MAX_BAKE_ANGLE = 75.0
# Depth steps bigger than this (in the fitted units of views.fit_to_views) count as occlusion edges.
DEPTH_EDGE_JUMP = 0.04
SKIP_PAINTED_FRACTION = 0.99


@dataclass
class Bake:
    texture: torch.Tensor  # [S, S, C], zero where no view saw the texel
    weight: torch.Tensor   # [S, S], the summed blend weight

    @property
    def seen(self) -> torch.Tensor:
        return self.weight > 0


def _trusted_pixels(mask: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """Covered pixels away from the silhouette and from depth jumps."""
    radius = int(2 / 512 * mask.shape[0])
    jump = torch.zeros_like(mask)
    dy = (depth[1:] - depth[:-1]).abs() > DEPTH_EDGE_JUMP
    dx = (depth[:, 1:] - depth[:, :-1]).abs() > DEPTH_EDGE_JUMP
    jump[1:] |= dy
    jump[:-1] |= dy
    jump[:, 1:] |= dx
    jump[:, :-1] |= dx
    if radius == 0:
        return mask & ~jump
    untrusted = torch.stack([~mask, jump]).float().unsqueeze(1)
    grown = F.max_pool2d(untrusted, 2 * radius + 1, stride=1, padding=radius)
    return mask & (grown.amax(dim=0)[0] == 0)


def bake_views(texels: TexelMaps, positions: torch.Tensor, faces: torch.Tensor, views: list[OrthoView],
               images: list[torch.Tensor], exponent: float = BAKE_EXPONENT, max_angle: float = MAX_BAKE_ANGLE) -> Bake:
    """Blend ``images`` ([H, H, C] in [0, 1], row 0 at the top) seen from ``views`` into the texels.

    ``positions``/``faces`` describe the mesh in the views' coordinates (fitted with ``fit_to_views``);
    ``texels`` comes from ``rasterize_uv`` of the same mesh and carries the normals that set the weights.
    """
    if len(views) != len(images) or not views:
        raise ValueError(f"got {len(views)} views and {len(images)} images; give one image per view, at least one")
    device = texels.position.device
    covered = texels.mask
    texel_position = texels.position[covered]
    texel_normal = texels.normal[covered]
    channels = images[0].shape[-1]
    colour_sum = torch.zeros(texel_position.shape[0], channels, device=device)
    weight_sum = torch.zeros(texel_position.shape[0], device=device)
    min_cos = math.cos(math.radians(max_angle))
    for view, image in zip(views, images):
        if image.ndim != 3 or image.shape[0] != image.shape[1] or image.shape[-1] != channels:
            raise ValueError(f"each view image must be [H, H, {channels}], got {tuple(image.shape)}")
        image = image.to(device=device, dtype=torch.float32)
        resolution = image.shape[0]
        raster, view_depth = render_depth(positions, faces, view, resolution)
        trusted = _trusted_pixels(raster.mask, view_depth)
        points, depth = view.project(texel_position, resolution, resolution)
        nearest = points.round().long().clamp(0, resolution - 1)
        row, col = nearest[:, 1], nearest[:, 0]
        cos = texel_normal @ view.basis(device)[2]
        tolerance = view.pixel_size(resolution) * (1 + 1 / cos.clamp(min=min_cos))
        in_frame = ((points >= -0.5) & (points <= resolution - 0.5)).all(dim=-1)
        visible = in_frame & trusted[row, col] & (depth <= view_depth[row, col] + tolerance) & (cos >= min_cos)
        weight = view.weight * cos.clamp(min=0) ** exponent * visible
        painted = (weight > 0) & (weight_sum > 0)
        if (weight > 0).any() and painted.sum() > SKIP_PAINTED_FRACTION * (weight > 0).sum():
            continue
        grid = (points / (resolution - 1) * 2 - 1).view(1, 1, -1, 2)
        colour = F.grid_sample(image.permute(2, 0, 1).unsqueeze(0), grid, mode="bilinear",
                               align_corners=True)[0, :, 0].T
        colour_sum += colour * weight.unsqueeze(-1)
        weight_sum += weight
    size = texels.mask.shape
    texture = torch.zeros(*size, channels, device=device)
    weight_map = torch.zeros(size, device=device)
    texture[covered] = colour_sum / weight_sum.clamp(min=1e-12).unsqueeze(-1)
    weight_map[covered] = weight_sum
    return Bake(texture, weight_map)


def push_pull_fill(texture: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Fill every texel outside ``known`` from the known ones by push-pull (coarse-to-fine averages).

    Known texels keep their colour; each unknown texel takes the average of the known texels at the
    finest pyramid level where any lie in its cell, upsampled smoothly, so gaps inside charts take
    their neighbours' colours and the space between charts gets a bleed that hides seams when
    the texture is filtered.
    """
    if not known.any():
        raise ValueError("no texel was seen by any view, so there is nothing to fill from; check the views and the mesh")
    colour = (texture * known.unsqueeze(-1)).permute(2, 0, 1).unsqueeze(0)
    weight = known.to(texture.dtype).view(1, 1, *known.shape)
    pyramid = [(colour, weight)]
    while max(pyramid[-1][1].shape[-2:]) > 1:
        c, w = pyramid[-1]
        pyramid.append((F.avg_pool2d(c, 2, ceil_mode=True), F.avg_pool2d(w, 2, ceil_mode=True)))
    c, w = pyramid[-1]
    filled = c / w.clamp(min=1e-12)
    for c, w in reversed(pyramid[:-1]):
        coarse = F.interpolate(filled, size=c.shape[-2:], mode="bilinear", align_corners=False)
        filled = torch.where(w > 0, c / w.clamp(min=1e-12), coarse)
    return filled[0].permute(1, 2, 0)


def spread_vertex_colours(colours: torch.Tensor, known: torch.Tensor, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Give unknown vertices the mean colour of their known neighbours, ring by ring, until none is left
    that touches a known one. Returns (colours, known) after spreading."""
    edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    source, target = torch.cat([edges[:, 0], edges[:, 1]]), torch.cat([edges[:, 1], edges[:, 0]])
    colours, known = colours.clone(), known.clone()
    while True:
        usable = known[source] & ~known[target]
        if not usable.any():
            return colours, known
        total = torch.zeros_like(colours).index_add_(0, target[usable], colours[source[usable]])
        count = torch.zeros(colours.shape[0], device=colours.device).index_add_(
            0, target[usable], torch.ones(int(usable.sum()), device=colours.device))
        reached = count > 0
        colours[reached] = total[reached] / count[reached].unsqueeze(-1)
        known |= reached


def fill_texture(bake: Bake, texels: TexelMaps, uv_mesh: UVMesh) -> torch.Tensor:
    """Fill the texels no view saw: across the mesh first, then in texture space.

    Vertices whose texel was seen take its colour; their colours spread along mesh edges (so across
    UV seams) to the vertices no view saw, and unseen texels inside charts take the colour
    interpolated from their face's vertices. The space between charts is then filled by push-pull.
    """
    device = bake.texture.device
    size = bake.texture.shape[0]
    uvs = torch.from_numpy(uv_mesh.uvs).to(device)
    source = torch.from_numpy(uv_mesh.source_vertex).to(device)
    uv_faces = torch.from_numpy(uv_mesh.faces).to(device)
    texel = uv_to_pixels(uvs, size).round().long().clamp(0, size - 1)
    seen_at_vertex = bake.seen[texel[:, 1], texel[:, 0]]
    vertex_count = int(source.max()) + 1
    channels = bake.texture.shape[-1]
    colour_sum = torch.zeros(vertex_count, channels, device=device).index_add_(
        0, source[seen_at_vertex], bake.texture[texel[seen_at_vertex, 1], texel[seen_at_vertex, 0]])
    hits = torch.zeros(vertex_count, device=device).index_add_(0, source[seen_at_vertex],
                                                                torch.ones(int(seen_at_vertex.sum()), device=device))
    colours, known = spread_vertex_colours(colour_sum / hits.clamp(min=1).unsqueeze(-1), hits > 0, source[uv_faces])
    interpolated = texels.raster.interpolate(colours[source], uv_faces)
    corners_known = known[source[uv_faces]].all(dim=-1)
    from_mesh = texels.mask & ~bake.seen & corners_known[texels.raster.face_index.clamp(min=0)]
    texture = torch.where(from_mesh.unsqueeze(-1), interpolated, bake.texture)
    return push_pull_fill(texture, bake.seen | from_mesh)
