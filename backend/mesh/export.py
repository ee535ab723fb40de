"""Mesh files: GLB (vertex colours, or UVs and a base colour texture), OBJ with vertex colours, binary PLY.

Colours are sRGB-encoded in OBJ and PLY (as those formats are read everywhere) and linear in GLB
(as glTF requires). Written with numpy alone (fast, no heavy dependency) and always atomically: the bytes go
to a temporary file in the destination folder, which is renamed over the target, so a
reader never sees a partial file and a failed write leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path

import numpy as np

from ..colors import srgb_to_linear
from .types import Mesh

FORMATS = (".glb", ".obj", ".ply")
TEXTURED_FORMATS = (".glb",)
# Our material slots as glTF names them; metallic/roughness would map to pbrMetallicRoughness.metallicRoughnessTexture.
GLTF_TEXTURE_KEYS = {"base_color": "baseColorTexture"}


def encode(mesh: Mesh, fmt: str) -> bytes:
    fmt = fmt.lower().lstrip(".")
    if fmt == "glb":
        return encode_glb(mesh)
    if fmt == "obj":
        return encode_obj(mesh)
    if fmt == "ply":
        return encode_ply(mesh)
    raise ValueError(f"unknown mesh format {fmt!r}; use one of {', '.join(FORMATS)}")


def save(mesh: Mesh, path: str | os.PathLike) -> Path:
    """Write ``mesh`` in the format its suffix names, atomically."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"{path.name}: unknown mesh format; use one of {', '.join(FORMATS)}")
    if mesh.material is not None and path.suffix.lower() not in TEXTURED_FORMATS:
        raise ValueError(f"{path.name}: a textured mesh is written as {' or '.join(TEXTURED_FORMATS)}")
    atomic_write(path, encode(mesh, path.suffix))
    return path


def save_textures(mesh: Mesh, glb_path: Path) -> dict[str, str]:
    """Write each texture of ``mesh`` as a PNG beside ``glb_path`` (``NAME.base_color.png``); returns their paths by slot."""
    if mesh.material is None:
        return {}
    written = {}
    for slot in mesh.material.maps():
        png = glb_path.with_name(f"{glb_path.stem}.{slot}.png")
        atomic_write(png, mesh.material.png(slot))
        written[slot] = str(png)
    return written


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def encode_glb(mesh: Mesh) -> bytes:
    views: list[tuple[bytes, int | None]] = []  # (bytes, glTF target)
    accessors: list[dict] = []
    attributes: dict[str, int] = {}

    def add(data: np.ndarray, component: int, kind: str, target: int | None, bounds: bool = False) -> int:
        views.append((data.tobytes(), target))
        acc = {"bufferView": len(views) - 1, "componentType": component, "count": int(data.shape[0]), "type": kind}
        if bounds and len(data):
            acc["min"] = data.min(axis=0).tolist()
            acc["max"] = data.max(axis=0).tolist()
        accessors.append(acc)
        return len(accessors) - 1

    attributes["POSITION"] = add(mesh.positions, 5126, "VEC3", 34962, bounds=True)
    if mesh.normals is not None:
        attributes["NORMAL"] = add(mesh.normals, 5126, "VEC3", 34962)
    if mesh.colors is not None:
        # glTF colours are linear; float keeps the dark tones that 8 bits of linear would band.
        attributes["COLOR_0"] = add(srgb_to_linear(mesh.colors_float()), 5126, "VEC4", 34962)
    if mesh.uvs is not None:
        # glTF's v runs down the image; ours runs up.
        attributes["TEXCOORD_0"] = add(np.stack([mesh.uvs[:, 0], 1 - mesh.uvs[:, 1]], axis=1).astype(np.float32), 5126, "VEC2", 34962)
    indices = add(mesh.faces.reshape(-1).astype(np.uint32), 5125, "SCALAR", 34963)
    images = []
    pbr: dict = {}
    if mesh.material is not None:
        for slot in mesh.material.maps():
            views.append((mesh.material.png(slot), None))
            images.append({"bufferView": len(views) - 1, "mimeType": "image/png", "name": slot})
            pbr[GLTF_TEXTURE_KEYS[slot]] = {"index": len(images) - 1}

    blob = bytearray()
    buffer_views = []
    for data, target in views:
        blob.extend(b"\0" * (-len(blob) % 4))
        view = {"buffer": 0, "byteOffset": len(blob), "byteLength": len(data)}
        if target is not None:
            view["target"] = target
        buffer_views.append(view)
        blob.extend(data)
    blob.extend(b"\0" * (-len(blob) % 4))

    primitive = {"attributes": attributes, "indices": indices, "mode": 4}
    gltf = {
        "asset": {"version": "2.0", "generator": "Hunyuan3D for Blender"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": "hunyuan3d"}],
        "meshes": [{"primitives": [primitive]}],
        "accessors": accessors,
        "bufferViews": buffer_views,
        "buffers": [{"byteLength": len(blob)}],
    }
    if images:
        # A painted texture is diffuse colour: not metallic, fully rough, until a model paints those maps too.
        primitive["material"] = 0
        gltf["materials"] = [{"name": "hunyuan3d", "pbrMetallicRoughness": {**pbr, "metallicFactor": 0.0, "roughnessFactor": 1.0}}]
        gltf["images"] = images
        gltf["samplers"] = [{"magFilter": 9729, "minFilter": 9987, "wrapS": 33071, "wrapT": 33071}]
        gltf["textures"] = [{"sampler": 0, "source": i} for i in range(len(images))]
    body = json.dumps(gltf, separators=(",", ":")).encode("utf-8")
    body += b" " * (-len(body) % 4)
    total = 12 + 8 + len(body) + 8 + len(blob)
    return b"".join(
        [
            struct.pack("<4sII", b"glTF", 2, total),
            struct.pack("<I4s", len(body), b"JSON"),
            body,
            struct.pack("<I4s", len(blob), b"BIN\0"),
            bytes(blob),
        ]
    )


def encode_obj(mesh: Mesh) -> bytes:
    """OBJ with the common ``v x y z r g b`` vertex-colour extension (read by Blender, MeshLab, trimesh)."""
    if mesh.colors is not None:
        rows = np.hstack([mesh.positions, mesh.colors_float()[:, :3]])
        vertices = _format_rows("v", rows, "%.6g")
    else:
        vertices = _format_rows("v", mesh.positions, "%.6g")
    faces = _format_rows("f", mesh.faces + 1, "%d")
    return b"# Hunyuan3D for Blender\n" + vertices + faces


def _format_rows(tag: str, rows: np.ndarray, fmt: str) -> bytes:
    if not len(rows):
        return b""
    line = tag + (" " + fmt) * rows.shape[1] + "\n"
    template = line * len(rows)
    return (template % tuple(rows.ravel().tolist())).encode("ascii")


def encode_ply(mesh: Mesh) -> bytes:
    n, m = mesh.vertex_count, mesh.face_count
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if mesh.normals is not None:
        fields += [("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
    if mesh.colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1"), ("alpha", "u1")]
    vertices = np.empty(n, dtype=fields)
    for axis, name in enumerate("xyz"):
        vertices[name] = mesh.positions[:, axis]
    if mesh.normals is not None:
        for axis, name in enumerate(("nx", "ny", "nz")):
            vertices[name] = mesh.normals[:, axis]
    if mesh.colors is not None:
        colors = mesh.colors_uint8()
        for axis, name in enumerate(("red", "green", "blue", "alpha")):
            vertices[name] = colors[:, axis]
    faces = np.empty(m, dtype=[("count", "u1"), ("indices", "<i4", (3,))])
    faces["count"] = 3
    faces["indices"] = mesh.faces
    ply_types = {"<f4": "float", "u1": "uchar"}
    header = ["ply", "format binary_little_endian 1.0", "comment Hunyuan3D for Blender", f"element vertex {n}"]
    header += [f"property {ply_types[t]} {name}" for name, t in fields]
    header += [f"element face {m}", "property list uchar int vertex_indices", "end_header", ""]
    return "\n".join(header).encode("ascii") + vertices.tobytes() + faces.tobytes()
