"""Training and evaluation samples, each fully determined by one integer seed.

A sample is a shape drawn by ``shapes.random_shape``, a camera at a random azimuth and an
elevation between 0 and 30 degrees, the framed RGBA picture that camera sees, and SDF and
colour targets at points on, near and around the surface.

Frame (the one Hunyuan3D-1's reconstruction works in, before its export turns it Y up):
Z is up, and the camera sits in the XZ plane on the +X side, so the picture's right is +Y
and its up is about +Z. Equivalently, the shape is turned about Z by minus the camera's
azimuth and then seen from azimuth 0. The shape's bounding box in this frame is centred on
the origin, and the longer half-side of what the picture shows is 0.5 (no half-side passing
0.55), inside the [-0.6, 0.6]^3 cube the model spans: the picture fixes the object's size.

Every seed belongs to one of three disjoint ranges, defined here and nowhere else: training
seeds are trained on; validation seeds take part in decisions (comparing recipes, placing the
surface level, watching a run's checkpoints, picking the example pictures); test seeds are
only ever scored for the figures reported about a finished model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .render import frame_object, render, surface_normals
from .shapes import Shape, random_shape, rotation_about

TRAINING_SEEDS = range(0, 1_000_000)
VALIDATION_SEEDS = range(1_000_000, 2_000_000)
TEST_SEEDS = range(2_000_000, 3_000_000)
# Recipes are compared on the first half of the validation seeds (evaluate --split validation); a
# training run scores its checkpoints and places its surface level on the second half, so a
# recipe's comparison figures are never on the shapes its own level was fitted to.
COMPARISON_SEEDS = VALIDATION_SEEDS[:500_000]
CALIBRATION_SEEDS = VALIDATION_SEEDS[500_000:]
IMAGE_SIZE = 128
RENDER_SIZE = 160  # rendered a little larger than the model input, then framed down to it
MAX_ELEVATION = math.radians(30.0)
BOUND = 0.6
NEAR_SIGMAS = (0.01, 0.04)
COLOR_BAND = 0.02  # colour is trained on points at most this far from the surface


@dataclass(frozen=True)
class PointCounts:
    """How many target points of each kind a sample carries.

    Args:
        surface: points projected onto the surface.
        near: surface points moved by Gaussian noise (half with each of ``NEAR_SIGMAS``).
        uniform: points uniform in the [-BOUND, BOUND]^3 cube.
    """

    surface: int = 1536
    near: int = 1536
    uniform: int = 1536

    @property
    def total(self) -> int:
        return self.surface + self.near + self.uniform


@dataclass
class Sample:
    """One seed's picture and targets.

    Args:
        image: (IMAGE_SIZE, IMAGE_SIZE, 4) uint8 framed RGBA, RGB premultiplied by alpha.
        points: (N, 3) float32 query points in the camera-aligned frame (surface, near, uniform, in that order).
        sdf: (N,) float32 signed distance (negative inside).
        colors: (N, 3) float32 RGB albedo of the nearest part.
        shape: the normalised shape in the camera-aligned frame.
        azimuth/elevation: the camera, in radians, in the shape's original frame.
    """

    image: np.ndarray
    points: np.ndarray
    sdf: np.ndarray
    colors: np.ndarray
    shape: Shape
    azimuth: float
    elevation: float


def aligned_shape(seed: int) -> tuple[Shape, float, float]:
    """The seed's shape in the camera-aligned frame, with the camera's azimuth and elevation."""
    rng = np.random.default_rng(seed)
    shape = random_shape(rng)
    azimuth = float(rng.uniform(0.0, 2.0 * math.pi))
    elevation = float(rng.uniform(0.0, MAX_ELEVATION))
    return shape.rotated(rotation_about("z", -azimuth)).normalized(view_elevation=elevation), azimuth, elevation


def render_input(shape: Shape, elevation: float, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """The framed uint8 RGBA picture the model reads, seen from azimuth 0 of the aligned frame."""
    framed = frame_object(render(shape, elevation, RENDER_SIZE * image_size // IMAGE_SIZE), image_size)
    return (framed * 255.0 + 0.5).to(torch.uint8).numpy()


def surface_points(shape: Shape, count: int, rng: np.random.Generator, iterations: int = 3) -> torch.Tensor:
    """Points on the surface: candidates near it, pushed along the gradient by their distance."""
    found: list[torch.Tensor] = []
    total = 0
    while total < count:
        candidates = torch.from_numpy(rng.uniform(-0.55, 0.55, size=(16 * count, 3)).astype(np.float32))
        candidates = candidates[shape.sdf(candidates).abs() < 0.08]
        for _ in range(iterations):
            candidates = candidates - shape.sdf(candidates)[:, None] * surface_normals(shape, candidates)
        candidates = candidates[shape.sdf(candidates).abs() < 2e-3]
        found.append(candidates)
        total += len(candidates)
    points = torch.cat(found)
    keep = rng.permutation(len(points))[:count]
    return points[torch.from_numpy(keep)]


def target_points(shape: Shape, counts: PointCounts, rng: np.random.Generator) -> torch.Tensor:
    surface = surface_points(shape, counts.surface + counts.near, rng)
    on_surface, to_move = surface[: counts.surface], surface[counts.surface:]
    sigmas = np.where(np.arange(counts.near) < counts.near // 2, NEAR_SIGMAS[0], NEAR_SIGMAS[1]).astype(np.float32)
    noise = rng.normal(size=(counts.near, 3)).astype(np.float32) * sigmas[:, None]
    near = (to_move + torch.from_numpy(noise)).clamp(-BOUND, BOUND)
    uniform = torch.from_numpy(rng.uniform(-BOUND, BOUND, size=(counts.uniform, 3)).astype(np.float32))
    return torch.cat([on_surface, near, uniform])


def make_sample(seed: int, counts: PointCounts = PointCounts(), image_size: int = IMAGE_SIZE) -> Sample:
    """The sample of ``seed``; the same seed always gives the same sample."""
    shape, azimuth, elevation = aligned_shape(seed)
    image = render_input(shape, elevation, image_size)
    rng = np.random.default_rng([seed, 1])
    points = target_points(shape, counts, rng)
    sdf, colors = shape.sdf_and_color(points)
    return Sample(image, points.numpy(), sdf.numpy(), colors.numpy(), shape, azimuth, elevation)


def image_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 4) framed pictures -> float (B, 4, H, W) in [0, 1], the model's input."""
    images = torch.as_tensor(images)
    return images.permute(0, 3, 1, 2).float() / 255.0
