from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np

from ..protocol import TEXTURE_BUFFER_PREFIX, Buffer

MESH_BUFFERS = ("positions", "faces", "colors", "normals", "uvs")
# A material's texture maps, in the order they travel and are written. Hunyuan3D-2.1's PBR paint
# adds "metallic_roughness" here and as a field of Material.
TEXTURE_SLOTS = ("base_color",)


@dataclass
class Material:
    """The texture maps of a mesh's material: uint8 [H, W, C] pictures, row 0 at the top (as glTF reads them).

    Args:
        base_color: sRGB RGB or RGBA, glTF's ``baseColorTexture``.
    """

    base_color: np.ndarray
    _png: dict[str, bytes] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for slot, pixels in self.maps().items():
            if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] not in (3, 4) or not pixels.size:
                raise ValueError(f"texture {slot!r} must be uint8 [H, W, 3 or 4], got {pixels.dtype} {pixels.shape}")

    def maps(self) -> dict[str, np.ndarray]:
        """The maps this material has, by slot name."""
        return {slot: getattr(self, slot) for slot in TEXTURE_SLOTS if getattr(self, slot) is not None}

    def png(self, slot: str) -> bytes:
        """The map of ``slot`` as PNG bytes, encoded once (the wire, the GLB and the saved PNG share them)."""
        if slot not in self._png:
            from PIL import Image

            buffer = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(getattr(self, slot))).save(buffer, format="PNG")
            self._png[slot] = buffer.getvalue()
        return self._png[slot]

    @classmethod
    def from_png(cls, maps: dict[str, bytes]) -> Material:
        missing = sorted(set(TEXTURE_SLOTS) - set(maps))
        unknown = sorted(set(maps) - set(TEXTURE_SLOTS))
        if missing or unknown:
            raise ValueError(f"a material has the textures {', '.join(TEXTURE_SLOTS)}; got {', '.join(sorted(maps)) or 'none'}")
        material = cls(**{slot: _decode_png(data) for slot, data in maps.items()})
        material._png.update(maps)
        return material


def _decode_png(data: bytes) -> np.ndarray:
    from PIL import Image

    picture = Image.open(io.BytesIO(data))
    return np.asarray(picture.convert("RGBA" if picture.mode in ("RGBA", "LA", "PA") else "RGB"))


@dataclass
class Mesh:
    """A triangle mesh with optional per-vertex colours and normals.

    Args:
        positions: float32 (N, 3).
        faces: int32 (M, 3), counter-clockwise seen from outside.
        colors: per-vertex RGBA, sRGB-encoded (like a picture's pixels), float32 in [0, 1] or uint8, (N, 4);
            RGB (N, 3) is widened.
        normals: float32 (N, 3), unit length.
        uvs: float32 (N, 2) texture coordinates, u to the right and v up (v = 1 is the texture's top
            row); a textured mesh is split along its UV seams, so each vertex has one.
        material: the textures the UVs index; needs ``uvs``.
    """

    positions: np.ndarray
    faces: np.ndarray
    colors: np.ndarray | None = None
    normals: np.ndarray | None = None
    uvs: np.ndarray | None = None
    material: Material | None = None

    def __post_init__(self) -> None:
        self.positions = np.ascontiguousarray(self.positions, dtype=np.float32).reshape(-1, 3)
        self.faces = np.ascontiguousarray(self.faces, dtype=np.int32).reshape(-1, 3)
        n = len(self.positions)
        if len(self.faces) and (self.faces.min() < 0 or self.faces.max() >= n):
            raise ValueError(f"face indices must lie in [0, {n}) for {n} vertices")
        if self.colors is not None:
            colors = np.asarray(self.colors)
            if colors.dtype != np.uint8:
                colors = colors.astype(np.float32)
            if colors.ndim != 2 or colors.shape[0] != n or colors.shape[1] not in (3, 4):
                raise ValueError(f"colors must be ({n}, 3) or ({n}, 4), got {colors.shape}")
            if colors.shape[1] == 3:
                alpha = np.full((n, 1), 255 if colors.dtype == np.uint8 else 1.0, dtype=colors.dtype)
                colors = np.concatenate([colors, alpha], axis=1)
            self.colors = np.ascontiguousarray(colors)
        if self.normals is not None:
            self.normals = np.ascontiguousarray(self.normals, dtype=np.float32).reshape(n, 3)
        if self.uvs is not None:
            self.uvs = np.ascontiguousarray(self.uvs, dtype=np.float32)
            if self.uvs.shape != (n, 2):
                raise ValueError(f"uvs must be ({n}, 2), got {self.uvs.shape}")
        if self.material is not None and self.uvs is None:
            raise ValueError("a textured mesh needs uvs")

    @property
    def vertex_count(self) -> int:
        return len(self.positions)

    @property
    def face_count(self) -> int:
        return len(self.faces)

    def colors_uint8(self) -> np.ndarray | None:
        if self.colors is None or self.colors.dtype == np.uint8:
            return self.colors
        return np.round(np.clip(self.colors, 0.0, 1.0) * 255.0).astype(np.uint8)

    def colors_float(self) -> np.ndarray | None:
        if self.colors is None or self.colors.dtype == np.float32:
            return self.colors
        return self.colors.astype(np.float32) / 255.0

    def bounds(self) -> tuple[list[float], list[float]]:
        if not len(self.positions):
            return [0.0] * 3, [0.0] * 3
        return self.positions.min(axis=0).tolist(), self.positions.max(axis=0).tolist()

    def to_buffers(self) -> list[Buffer]:
        """The wire form: raw little-endian arrays, never JSON numbers."""
        out = [Buffer.from_array("positions", self.positions), Buffer.from_array("faces", self.faces)]
        if self.colors is not None:
            out.append(Buffer.from_array("colors", self.colors))
        if self.normals is not None:
            out.append(Buffer.from_array("normals", self.normals))
        if self.uvs is not None:
            out.append(Buffer.from_array("uvs", self.uvs))
        if self.material is not None:
            out += [Buffer.from_bytes(TEXTURE_BUFFER_PREFIX + slot, self.material.png(slot)) for slot in self.material.maps()]
        return out

    def textures(self) -> list[str]:
        """The texture slots of the material, for the result's header."""
        return [] if self.material is None else list(self.material.maps())

    @classmethod
    def from_buffers(cls, buffers: dict[str, Buffer]) -> Mesh:
        arrays = {name: buffers[name].to_array() for name in MESH_BUFFERS if name in buffers}
        textures = {name[len(TEXTURE_BUFFER_PREFIX):]: buffers[name].to_bytes() for name in buffers if name.startswith(TEXTURE_BUFFER_PREFIX)}
        return cls(**arrays, material=Material.from_png(textures) if textures else None)
