"""What to do to a result in Blender once it is imported (face budget, quads, LODs, origin, scale). No bpy.

The options travel with the request, so an object's stored settings (``recipe``) carry them
to Regenerate and Load Settings. ``finishing`` does the work, one step per tick; the backend
decimates to the face budget and makes the LODs where it can, so Blender only imports them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from .backend.protocol import MAX_LODS
from .errors import AddonError

QUAD_MODES = ("NONE", "QUADRIFLOW", "VOXEL")
BACKEND_FACE_LIMIT = "max_faces"  # a model with this parameter decimates in the backend, before the mesh is sent


class FinishingError(AddonError):
    """Finishing options that can't be used as they are."""


@dataclass(frozen=True)
class FinishingOptions:
    """Args:
        face_budget: decimate to at most this many faces (0: keep every face).
        quads: "NONE", "QUADRIFLOW" (Blender's QuadriFlow, aiming at the face budget) or "VOXEL" (voxel remesh).
        voxel_size: the voxel remesh's cell size in scene units (after the scale is applied).
        lods: how many decimated copies to make, each with half the faces of the one before.
        origin_bottom: move the origin to the bottom centre of the bounding box (the mesh stays in place).
        apply_scale: bake the object's scale into the mesh (scale 1, same size).
    """

    face_budget: int = 0
    quads: str = "NONE"
    voxel_size: float = 0.02
    lods: int = 0
    origin_bottom: bool = False
    apply_scale: bool = False

    def __post_init__(self):
        if self.face_budget < 0:
            raise FinishingError(f"The face budget must be 0 (off) or more, not {self.face_budget}", "set Face Budget to 0 or a face count")
        if self.quads not in QUAD_MODES:
            raise FinishingError(f"Unknown quad remesh {self.quads!r}", f"use one of {', '.join(QUAD_MODES)}")
        if not self.voxel_size > 0:
            raise FinishingError(f"The voxel size must be more than 0, not {self.voxel_size}", "set Voxel Size to e.g. 0.02")
        if not 0 <= self.lods <= MAX_LODS:
            raise FinishingError(f"LODs must be 0 to {MAX_LODS}, not {self.lods}", f"set LODs to at most {MAX_LODS}")

    @property
    def active(self) -> bool:
        return self != FinishingOptions(voxel_size=self.voxel_size)

    def step_names(self) -> list[str]:
        """The steps in the order they run; ``finishing`` may find the decimation has nothing to do."""
        steps = ["apply scale"] if self.apply_scale else []
        if self.face_budget and self.quads != "QUADRIFLOW":  # QuadriFlow aims at the budget itself
            steps.append("decimate")
        steps += {"NONE": [], "QUADRIFLOW": ["QuadriFlow remesh"], "VOXEL": ["voxel remesh"]}[self.quads]
        if self.origin_bottom:
            steps.append("origin")
        steps += [f"LOD {level} of {self.lods}" for level in range(1, self.lods + 1)]
        return steps

    def backend_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """The job's parameters with the face budget given to the model's own decimation, where it has one.

        Decimating once, in the backend, sends and imports a smaller mesh; Blender then has nothing
        left to decimate. QuadriFlow keeps the model's full detail to remesh from.
        """
        if not self.face_budget or self.quads == "QUADRIFLOW" or BACKEND_FACE_LIMIT not in params:
            return params
        return {**params, BACKEND_FACE_LIMIT: min(int(params[BACKEND_FACE_LIMIT]), self.face_budget)}

    def backend_lods(self, params: dict[str, Any]) -> int:
        """How many LODs the backend makes and sends with the result (a submit's ``lods``); Blender makes the rest.

        The backend's copies are made from the mesh it sends, so they are the LODs only when Blender
        keeps that mesh's shape: no quad remesh (its LODs come from the quads), and a face budget, if
        any, already spent by the model's own decimation. A textured result's LODs are made in Blender,
        whose decimation keeps the UV map (the backend's copies carry colours, not UVs).
        """
        if self.quads != "NONE" or self.face_budget and BACKEND_FACE_LIMIT not in params or params.get("texture"):
            return 0
        return self.lods

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FinishingOptions:
        """The options stored on an object; FinishingError when they were edited into something unusable."""
        try:
            stored = json.loads(text)
            known = {f.name: f.type for f in fields(cls)}
            if not isinstance(stored, dict) or set(stored) - set(known):
                raise ValueError(f"expected a JSON object with keys among {', '.join(known)}")
            return cls(**{name: {"int": int, "float": float, "bool": bool, "str": str}[known[name]](value)
                          for name, value in stored.items()})
        except (TypeError, ValueError, FinishingError) as exc:
            raise FinishingError(f"This object's finishing settings are damaged ({getattr(exc, 'message', exc)})",
                                 "set Finishing in the panel and generate again") from None


def faces_summary(counts: list[int], triangles_only: bool) -> str:
    """"LODs 20000/10000/5000 faces": the result's faces, then each LOD's (in triangles when the result has quads)."""
    return f"LODs {'/'.join(str(count) for count in counts)} {'faces' if triangles_only else 'triangles'}"
