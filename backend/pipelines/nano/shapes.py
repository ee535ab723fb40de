"""Procedural coloured shapes as signed distance functions (negative inside, positive outside).

A ``Shape`` is a union of up to four ``Part``s, each a primitive with its own pose and colour.
The distance of the union is the minimum over parts, and the colour at a point is the colour
of the nearest part. Everything is vectorised over points with torch; a shape is drawn from
a ``numpy`` random generator, so the same seed always gives the same shape.

Shapes are built Z up (composites stand on their base), then ``normalized`` centres their
bounding box on the origin and scales them to ``HALF_EXTENT``: their longest half-side, or,
given the elevation of the camera that sees them, the longer half-side of what the picture
shows (so the picture fixes the size), as long as no half-side passes ``MAX_HALF_EXTENT``.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch

HALF_EXTENT = 0.5
MAX_HALF_EXTENT = 0.55  # keeps deep objects, scaled by their picture, inside the model's [-0.6, 0.6]^3
PRIMITIVES = ("sphere", "ellipsoid", "box", "rounded_box", "cylinder", "cone", "torus", "capsule")


def _length(*parts: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(sum(part * part for part in parts))


def sd_sphere(p: torch.Tensor, radius: float) -> torch.Tensor:
    return p.norm(dim=-1) - radius


def sd_ellipsoid(p: torch.Tensor, rx: float, ry: float, rz: float) -> torch.Tensor:
    # A bound, not the exact distance (no closed form exists); exact on the surface and sign-correct.
    r = p.new_tensor((rx, ry, rz))
    k0 = (p / r).norm(dim=-1)
    k1 = (p / (r * r)).norm(dim=-1)
    at_centre = k1 < 1e-9
    bound = k0 * (k0 - 1.0) / torch.where(at_centre, torch.ones_like(k1), k1)
    return torch.where(at_centre, torch.full_like(k0, -min(rx, ry, rz)), bound)


def sd_box(p: torch.Tensor, hx: float, hy: float, hz: float) -> torch.Tensor:
    q = p.abs() - p.new_tensor((hx, hy, hz))
    return q.clamp_min(0.0).norm(dim=-1) + q.max(dim=-1).values.clamp_max(0.0)


def sd_rounded_box(p: torch.Tensor, hx: float, hy: float, hz: float, radius: float) -> torch.Tensor:
    return sd_box(p, hx - radius, hy - radius, hz - radius) - radius


def sd_cylinder(p: torch.Tensor, radius: float, half_height: float) -> torch.Tensor:
    """Capped cylinder around the z axis."""
    dx = _length(p[..., 0], p[..., 1]) - radius
    dz = p[..., 2].abs() - half_height
    outside = _length(dx.clamp_min(0.0), dz.clamp_min(0.0))
    return outside + torch.maximum(dx, dz).clamp_max(0.0)


def sd_cone(p: torch.Tensor, half_height: float, bottom_radius: float, top_radius: float) -> torch.Tensor:
    """Capped cone (a frustum when both radii are positive) around the z axis, bottom at z = -half_height."""
    qx = _length(p[..., 0], p[..., 1])
    qz = p[..., 2]
    cap_radius = torch.where(qz < 0.0, torch.full_like(qx, bottom_radius), torch.full_like(qx, top_radius))
    # Distance to the nearer cap disc, and to the slanted side segment from (bottom_radius, -h) to (top_radius, h).
    cap_x = qx - torch.minimum(qx, cap_radius)
    cap_z = qz.abs() - half_height
    edge_x, edge_z = top_radius - bottom_radius, 2.0 * half_height
    t = (((top_radius - qx) * edge_x + (half_height - qz) * edge_z) / (edge_x * edge_x + edge_z * edge_z)).clamp(0.0, 1.0)
    side_x = qx - top_radius + edge_x * t
    side_z = qz - half_height + edge_z * t
    inside = (side_x < 0.0) & (cap_z < 0.0)
    distance = torch.sqrt(torch.minimum(cap_x * cap_x + cap_z * cap_z, side_x * side_x + side_z * side_z))
    return torch.where(inside, -distance, distance)


def sd_torus(p: torch.Tensor, major_radius: float, minor_radius: float) -> torch.Tensor:
    """Torus lying in the xy plane."""
    ring = _length(p[..., 0], p[..., 1]) - major_radius
    return _length(ring, p[..., 2]) - minor_radius


def sd_capsule(p: torch.Tensor, half_length: float, radius: float) -> torch.Tensor:
    """Segment from z = -half_length to z = half_length, thickened by radius."""
    z = p[..., 2] - p[..., 2].clamp(-half_length, half_length)
    return _length(p[..., 0], p[..., 1], z) - radius


SDF_OF_KIND: dict[str, Callable[..., torch.Tensor]] = {
    "sphere": sd_sphere,
    "ellipsoid": sd_ellipsoid,
    "box": sd_box,
    "rounded_box": sd_rounded_box,
    "cylinder": sd_cylinder,
    "cone": sd_cone,
    "torus": sd_torus,
    "capsule": sd_capsule,
}


@dataclass(frozen=True)
class Part:
    """One primitive placed in the shape.

    Args:
        kind: a name in ``PRIMITIVES``.
        args: the primitive's sizes, positional as in its ``sd_*`` function.
        rotation: (3, 3) local-to-shape rotation.
        translation: (3,) the part's centre in the shape frame.
        color: RGB albedo in [0, 1].
    """

    kind: str
    args: tuple
    rotation: np.ndarray
    translation: np.ndarray
    color: tuple[float, float, float]

    def sdf(self, points: torch.Tensor) -> torch.Tensor:
        rotation = points.new_tensor(self.rotation)
        local = (points - points.new_tensor(self.translation)) @ rotation  # R^T (p - t), row-vector form
        return SDF_OF_KIND[self.kind](local, *self.args)


@dataclass(frozen=True)
class Shape:
    """A union of parts under a similarity transform: shape point = rotation @ (p - offset) / scale.

    Args:
        name: the primitive or composite it was drawn as (``mug``, ``torus``...).
        parts: the primitives.
        rotation/offset/scale: the transform from the frame the parts were built in to the frame
            the shape is evaluated in (``rotated`` and ``normalized`` set these).
    """

    name: str
    parts: tuple[Part, ...]
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    offset: np.ndarray = field(default_factory=lambda: np.zeros(3))
    scale: float = 1.0

    def _local(self, points: torch.Tensor) -> torch.Tensor:
        return ((points - points.new_tensor(self.offset)) / self.scale) @ points.new_tensor(self.rotation)

    def part_distances(self, points: torch.Tensor) -> torch.Tensor:
        """(..., parts) signed distance to each part, in the evaluation frame's units."""
        local = self._local(points)
        return torch.stack([part.sdf(local) for part in self.parts], dim=-1) * self.scale

    def sdf(self, points: torch.Tensor) -> torch.Tensor:
        return self.part_distances(points).min(dim=-1).values

    def sdf_and_color(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        distances = self.part_distances(points)
        sdf, nearest = distances.min(dim=-1)
        palette = points.new_tensor([part.color for part in self.parts])
        return sdf, palette[nearest]

    def rotated(self, rotation: np.ndarray) -> Shape:
        """The same shape turned by ``rotation`` about the origin of the evaluation frame."""
        return replace(self, rotation=rotation @ self.rotation, offset=rotation @ self.offset)

    def bounding_box(self, resolution: int = 40, search: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned bounds of the inside: a coarse grid over [-search, search]^3, then a fine one around what it found."""
        low, high = np.full(3, -search), np.full(3, search)
        for _ in range(2):
            axes = [torch.linspace(float(a), float(b), resolution) for a, b in zip(low, high)]
            grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
            cell = (high - low) / (resolution - 1)
            inside = grid[self.sdf(grid) < 0.5 * float(np.linalg.norm(cell))]
            if not len(inside):
                raise ValueError(f"shape {self.name!r} has no inside within [-{search}, {search}]^3")
            low, high = inside.min(dim=0).values.numpy() - cell, inside.max(dim=0).values.numpy() + cell
        inside = grid[self.sdf(grid) < 0.0]
        return inside.min(dim=0).values.numpy() - cell / 2, inside.max(dim=0).values.numpy() + cell / 2

    def normalized(self, view_elevation: float | None = None) -> Shape:
        """Bounding box centred on the origin and scaled to ``HALF_EXTENT``.

        Without ``view_elevation`` the longest half-side becomes ``HALF_EXTENT``. With it, the
        shape is taken as seen by a camera on the +X side at that elevation (radians), and the
        longer half-side of the picture (along Y, and along the camera's up vector) becomes
        ``HALF_EXTENT``, unless that would make some half-side longer than ``MAX_HALF_EXTENT``.
        A single picture cannot say how deep an object is, so scaling by depth would make its
        size a guess too; scaling by the picture leaves only the depth to guess.
        """
        low, high = self.bounding_box()
        half = (high - low) / 2.0
        factor = HALF_EXTENT / float(half.max())
        if view_elevation is not None:
            # Turning about Y by the elevation takes the camera's up vector to +Z.
            seen_low, seen_high = self.rotated(rotation_about("y", view_elevation)).bounding_box()
            seen = max(float(half[1]), float(seen_high[2] - seen_low[2]) / 2.0)
            factor = min(HALF_EXTENT / seen, MAX_HALF_EXTENT / float(half.max()))
        centre = (low + high) / 2.0
        return replace(self, offset=(self.offset - centre) * factor, scale=self.scale * factor)


def rotation_about(axis: str, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniform over rotations (QR of a Gaussian matrix with the sign fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def random_color(rng: np.random.Generator) -> tuple[float, float, float]:
    hue, saturation, value = rng.random(), rng.uniform(0.35, 0.95), rng.uniform(0.45, 1.0)
    return tuple(float(c) for c in colorsys.hsv_to_rgb(hue, saturation, value))


def _part(kind: str, args: tuple, color: tuple, at=(0.0, 0.0, 0.0), rotation: np.ndarray | None = None) -> Part:
    return Part(kind, tuple(float(a) for a in args), np.eye(3) if rotation is None else rotation,
                np.asarray(at, dtype=np.float64), color)


def random_primitive_args(kind: str, rng: np.random.Generator) -> tuple:
    """Sizes of a primitive of about unit extent with random proportions."""
    u = rng.uniform
    if kind == "sphere":
        return (u(0.5, 1.0),)
    if kind == "ellipsoid":
        return (u(0.35, 1.0), u(0.35, 1.0), u(0.35, 1.0))
    if kind == "box":
        return (u(0.2, 1.0), u(0.2, 1.0), u(0.2, 1.0))
    if kind == "rounded_box":
        sides = (u(0.3, 1.0), u(0.3, 1.0), u(0.3, 1.0))
        return (*sides, u(0.05, 0.8) * min(sides))
    if kind == "cylinder":
        return (u(0.25, 0.9), u(0.2, 1.0))
    if kind == "cone":
        bottom = u(0.4, 1.0)
        return (u(0.3, 1.0), bottom, u(0.0, 0.6) * bottom)
    if kind == "torus":
        major = u(0.5, 0.9)
        return (major, u(0.12, 0.5) * major)
    if kind == "capsule":
        return (u(0.2, 0.8), u(0.2, 0.6))
    raise ValueError(f"unknown primitive {kind!r}")


def primitive(kind: str, rng: np.random.Generator) -> Shape:
    part = _part(kind, random_primitive_args(kind, rng), random_color(rng))
    return Shape(kind, (part,)).rotated(random_rotation(rng))


def mug(rng: np.random.Generator) -> Shape:
    radius, half_height = rng.uniform(0.35, 0.6), rng.uniform(0.4, 0.7)
    handle_major = rng.uniform(0.22, 0.35) * (half_height / 0.55)
    body = _part("cylinder", (radius, half_height), random_color(rng))
    handle = _part("torus", (handle_major, rng.uniform(0.05, 0.09)), random_color(rng),
                   at=(radius + 0.6 * handle_major, 0.0, 0.0), rotation=rotation_about("x", math.pi / 2))
    return Shape("mug", (body, handle))


def table(rng: np.random.Generator) -> Shape:
    top_half = (rng.uniform(0.6, 1.0), rng.uniform(0.4, 1.0), rng.uniform(0.04, 0.1))
    leg_height = rng.uniform(0.5, 0.9)
    top = _part("box", top_half, random_color(rng), at=(0, 0, leg_height))
    leg_color = random_color(rng)
    pole = _part("cylinder", (rng.uniform(0.07, 0.15), leg_height / 2), leg_color, at=(0, 0, leg_height / 2))
    foot = _part("cylinder", (rng.uniform(0.3, 0.5), 0.05), leg_color, at=(0, 0, 0.05))
    return Shape("table", (top, pole, foot))


def mushroom(rng: np.random.Generator) -> Shape:
    stem_radius, stem_half = rng.uniform(0.12, 0.3), rng.uniform(0.25, 0.5)
    cap = (rng.uniform(0.45, 0.9), rng.uniform(0.45, 0.9), rng.uniform(0.2, 0.45))
    stem = _part("cylinder", (stem_radius, stem_half), random_color(rng))
    head = _part("ellipsoid", (cap[0], cap[1], cap[2]), random_color(rng), at=(0, 0, stem_half))
    return Shape("mushroom", (stem, head))


def snowman(rng: np.random.Generator) -> Shape:
    radii = sorted(rng.uniform(0.22, 0.55, size=rng.integers(2, 4)), reverse=True)
    color = random_color(rng)
    parts, z = [], 0.0
    for i, r in enumerate(radii):
        z = z + (r if i == 0 else 0.8 * (radii[i - 1] + r) - radii[i - 1])
        parts.append(_part("sphere", (r,), color, at=(0, 0, z)))
        z += r
    head_radius, head_z = radii[-1], z - radii[-1]
    nose_half = rng.uniform(0.08, 0.16)
    nose = _part("cone", (nose_half, rng.uniform(0.04, 0.08), 0.0), random_color(rng),
                 at=(head_radius + nose_half * 0.6, 0, head_z), rotation=rotation_about("y", math.pi / 2))
    return Shape("snowman", tuple(parts) + (nose,))


def lamp(rng: np.random.Generator) -> Shape:
    pole_half = rng.uniform(0.3, 0.6)
    base = _part("cylinder", (rng.uniform(0.25, 0.45), 0.06), random_color(rng), at=(0, 0, 0.06))
    pole = _part("capsule", (pole_half, rng.uniform(0.04, 0.08)), random_color(rng), at=(0, 0, 0.06 + pole_half))
    shade_half = rng.uniform(0.15, 0.3)
    bottom = rng.uniform(0.3, 0.5)
    shade = _part("cone", (shade_half, bottom, bottom * rng.uniform(0.3, 0.8)), random_color(rng),
                  at=(0, 0, 0.06 + 2 * pole_half))
    return Shape("lamp", (base, pole, shade))


def stool(rng: np.random.Generator) -> Shape:
    seat_radius, leg_height = rng.uniform(0.4, 0.6), rng.uniform(0.5, 0.9)
    seat = _part("cylinder", (seat_radius, rng.uniform(0.05, 0.1)), random_color(rng), at=(0, 0, leg_height))
    leg_color, leg_radius, splay = random_color(rng), rng.uniform(0.04, 0.08), rng.uniform(0.0, 0.25)
    legs = []
    for k in range(3):
        angle = 2 * math.pi * k / 3
        spread = seat_radius * 0.7
        at = (spread * math.cos(angle) * (1 + splay / 2), spread * math.sin(angle) * (1 + splay / 2), leg_height / 2)
        tilt = rotation_about("z", angle) @ rotation_about("y", splay) @ rotation_about("z", -angle)
        legs.append(_part("capsule", (leg_height / 2, leg_radius), leg_color, at=at, rotation=tilt))
    return Shape("stool", (seat, *legs))


def dumbbell(rng: np.random.Generator) -> Shape:
    half_length = rng.uniform(0.4, 0.8)
    weight_color = random_color(rng)
    bar = _part("cylinder", (rng.uniform(0.06, 0.12), half_length), random_color(rng))
    ends = tuple(_part("sphere", (rng.uniform(0.2, 0.4),), weight_color, at=(0, 0, sign * half_length)) for sign in (-1, 1))
    return Shape("dumbbell", (bar, *ends)).rotated(rotation_about("y", math.pi / 2))


def tree(rng: np.random.Generator) -> Shape:
    trunk_half = rng.uniform(0.15, 0.35)
    trunk = _part("cylinder", (rng.uniform(0.08, 0.15), trunk_half), random_color(rng), at=(0, 0, trunk_half))
    leaves_color, parts, z = random_color(rng), [trunk], 2 * trunk_half
    for level in range(int(rng.integers(1, 3))):
        half = rng.uniform(0.25, 0.4) * (0.8**level)
        parts.append(_part("cone", (half, rng.uniform(0.35, 0.6) * (0.8**level), 0.0), leaves_color, at=(0, 0, z + half)))
        z += 1.2 * half
    return Shape("tree", tuple(parts))


def bottle(rng: np.random.Generator) -> Shape:
    radius, body_half = rng.uniform(0.25, 0.45), rng.uniform(0.4, 0.7)
    neck_half, neck_radius = rng.uniform(0.1, 0.25), rng.uniform(0.08, 0.4) * radius + 0.04
    body = _part("rounded_box", (radius, radius, body_half, radius * rng.uniform(0.6, 0.99)), random_color(rng))
    neck = _part("cylinder", (neck_radius, neck_half + 0.1), random_color(rng), at=(0, 0, body_half + neck_half))
    cap = _part("cylinder", (neck_radius * 1.2, 0.06), random_color(rng), at=(0, 0, body_half + 2 * neck_half + 0.1))
    return Shape("bottle", (body, neck, cap))


COMPOSITES: dict[str, Callable[[np.random.Generator], Shape]] = {
    "mug": mug,
    "table": table,
    "mushroom": mushroom,
    "snowman": snowman,
    "lamp": lamp,
    "stool": stool,
    "dumbbell": dumbbell,
    "tree": tree,
    "bottle": bottle,
}
COMPOSITE_SHARE = 0.55


def random_shape(rng: np.random.Generator) -> Shape:
    """A primitive with a random pose, or an upright composite, in the frame it was built in (not normalised)."""
    if rng.random() < COMPOSITE_SHARE:
        names = sorted(COMPOSITES)
        return COMPOSITES[names[int(rng.integers(len(names)))]](rng)
    return primitive(PRIMITIVES[int(rng.integers(len(PRIMITIVES)))], rng)
