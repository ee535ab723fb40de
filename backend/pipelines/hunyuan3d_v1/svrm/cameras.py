"""The 20-value camera vector each SVRM input image is tagged with.

Cameras orbit the origin in SVRM's Z-up world at distance 1.5 and look at it, OpenGL style
(looking down their own -Z). The vector is the 4x4 camera-to-world matrix flattened row by
row, then the intrinsics fx, fy, cx, cy normalised by the image size.
"""

from __future__ import annotations

import numpy as np
import torch

CAMERA_DISTANCE = 1.5
FOCAL = 35 / 32  # a 49.13 degree field of view
PRINCIPAL_POINT = 0.5
VIEW_AZIMUTHS = (0, 60, 120, 180, 240, 300)
WORLD_UP = np.array([0.0, 0.0, 1.0])


def camera_to_world(azimuth_deg: float, elevation_deg: float, distance: float = CAMERA_DISTANCE) -> np.ndarray:
    """4x4 float64 pose of a camera on the sphere of ``distance`` looking at the origin."""
    azimuth, elevation = np.radians(azimuth_deg), np.radians(elevation_deg)
    position = distance * np.array(
        [np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)]
    )
    forward = -position / np.linalg.norm(position)
    right = np.cross(forward, WORLD_UP)
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    up /= np.linalg.norm(up)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, up, -forward, position
    return pose


def camera_vector(azimuth_deg: float, elevation_deg: float = 0.0) -> np.ndarray:
    """The 20 values for one view: the pose row by row, then fx, fy, cx, cy."""
    intrinsics = np.array([FOCAL, FOCAL, PRINCIPAL_POINT, PRINCIPAL_POINT])
    return np.concatenate([camera_to_world(azimuth_deg, elevation_deg).reshape(-1), intrinsics])


def svrm_cameras(azimuths: tuple[float, ...] = VIEW_AZIMUTHS) -> torch.Tensor:
    """(len(azimuths) + 1, 20) float32: one row per view at elevation 0, then zeros for the condition image."""
    rows = [camera_vector(azimuth) for azimuth in azimuths] + [np.zeros(20)]
    return torch.from_numpy(np.stack(rows)).float()
