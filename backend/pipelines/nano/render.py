"""A sphere tracer for ``Shape``s: RGBA pictures with a transparent background, and the framing step.

The camera follows Hunyuan3D-1's conventions (Z up, looking at the origin from distance 1.5,
focal length 35/32 of the image width, so a 49.1 degree field of view). Azimuth 0 puts the
camera on +X; image right is then +Y and image up is +Z. Shading is Lambertian with one
light above and to the left of the camera plus ambient light, so colours stay readable.

``frame_object`` crops a picture to its object and scales it to fill a fixed share of a
square; the training data and the ``nano`` pipeline both pass their pictures through it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .shapes import Shape

CAMERA_DISTANCE = 1.5
FOCAL = 35.0 / 32.0  # focal length over image width
AMBIENT = 0.35
# Bounding sphere of everything a normalised shape can reach (its box is inside [-0.55, 0.55]^3).
SCENE_RADIUS = 1.0
OBJECT_FILL = 0.85  # share of the framed picture's side the object's longer side takes


def camera_frame(azimuth: float, elevation: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Position, right, up and forward unit vectors of the camera (angles in radians)."""
    position = CAMERA_DISTANCE * torch.tensor(
        [math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth), math.sin(elevation)]
    )
    forward = -position / position.norm()
    right = torch.linalg.cross(forward, torch.tensor([0.0, 0.0, 1.0]))
    right = right / right.norm()
    up = torch.linalg.cross(right, forward)
    return position, right, up, forward


def render(shape: Shape, elevation: float, resolution: int, *, azimuth: float = 0.0, steps: int = 64) -> torch.Tensor:
    """(resolution, resolution, 4) float RGBA in [0, 1]; alpha is 1 on the object, 0 elsewhere.

    RGB is not premultiplied; background pixels are (0, 0, 0, 0).
    """
    position, right, up, forward = camera_frame(azimuth, elevation)
    pixel = (torch.arange(resolution, dtype=torch.float32) + 0.5) / resolution - 0.5
    v, u = torch.meshgrid(-pixel, pixel, indexing="ij")  # row 0 is the top of the picture
    directions = forward + (u[..., None] * right + v[..., None] * up) / FOCAL
    directions = (directions / directions.norm(dim=-1, keepdim=True)).reshape(-1, 3)

    t = torch.full((directions.shape[0],), CAMERA_DISTANCE - SCENE_RADIUS)
    far = CAMERA_DISTANCE + SCENE_RADIUS
    hit = torch.zeros_like(t, dtype=torch.bool)
    active = torch.ones_like(hit)
    for _ in range(steps):
        index = active.nonzero().squeeze(1)
        if not len(index):
            break
        distance = shape.sdf(position + t[index, None] * directions[index])
        t[index] += 0.9 * distance
        done = distance.abs() < 5e-4
        hit[index[done]] = True
        active[index[done | (t[index] > far)]] = False

    image = torch.zeros(directions.shape[0], 4)
    index = hit.nonzero().squeeze(1)
    if len(index):
        points = position + t[index, None] * directions[index]
        _, albedo = shape.sdf_and_color(points)
        normals = surface_normals(shape, points)
        light = -forward + 0.8 * up - 0.6 * right
        light = light / light.norm()
        lambert = (normals @ light).clamp_min(0.0)
        image[index, :3] = albedo * (AMBIENT + (1.0 - AMBIENT) * lambert[:, None])
        image[index, 3] = 1.0
    return image.reshape(resolution, resolution, 4)


def surface_normals(shape: Shape, points: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    offsets = torch.eye(3) * eps
    gradient = torch.stack(
        [shape.sdf(points + offsets[k]) - shape.sdf(points - offsets[k]) for k in range(3)], dim=-1
    )
    return gradient / gradient.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def frame_object(rgba: torch.Tensor, size: int, fill: float = OBJECT_FILL) -> torch.Tensor:
    """Crop an (H, W, 4) float RGBA picture to a square around its object and resize it to ``size``.

    The object's longer side becomes ``fill`` of the square, centred; outside the picture is
    transparent. RGB comes back premultiplied by alpha, the form the model reads. A picture
    with nothing opaque is only resized.
    """
    height, width = rgba.shape[:2]
    premultiplied = torch.cat([rgba[..., :3] * rgba[..., 3:], rgba[..., 3:]], dim=-1).permute(2, 0, 1)[None]
    rows = (rgba[..., 3] > 0.5).any(dim=1).nonzero().squeeze(1)
    cols = (rgba[..., 3] > 0.5).any(dim=0).nonzero().squeeze(1)
    if len(rows):
        centre_y = (float(rows[0]) + float(rows[-1]) + 1.0) / 2.0
        centre_x = (float(cols[0]) + float(cols[-1]) + 1.0) / 2.0
        side = max(float(rows[-1] - rows[0] + 1), float(cols[-1] - cols[0] + 1)) / fill
    else:
        centre_y, centre_x, side = height / 2.0, width / 2.0, float(max(height, width))
    # Average whole blocks first when shrinking a lot, so the bilinear resample does not alias.
    factor = int(side // size)
    if factor > 1:
        premultiplied = F.avg_pool2d(premultiplied, factor)
        centre_y, centre_x, side = centre_y / factor, centre_x / factor, side / factor
        height, width = premultiplied.shape[2:]
    step = torch.arange(size, dtype=torch.float32) + 0.5
    ys = centre_y - side / 2.0 + step * side / size
    xs = centre_x - side / 2.0 + step * side / size
    grid = torch.stack(torch.meshgrid(2.0 * ys / height - 1.0, 2.0 * xs / width - 1.0, indexing="ij")[::-1], dim=-1)
    framed = F.grid_sample(premultiplied, grid[None], mode="bilinear", padding_mode="zeros", align_corners=False)
    return framed[0].permute(1, 2, 0).clamp(0.0, 1.0)
