"""MeshArrays -> a Blender object in the scene: geometry in bulk, vertex colours or UVs and textures, material, placement.

Main thread only, and kept short: the reader thread has already laid the arrays out as
Blender stores them, edges included, so this only hands them over. Geometry goes through the
attribute API (``position``, ``.edge_verts``, ``.corner_vert``, ``.corner_edge``), several
times faster than the classic vertices/edges/loops path, which remains the fallback for
Blender builds where those attributes are not reachable from Python. The face offsets have
no bulk path (see ``set_face_starts``).
"""

from __future__ import annotations

import ctypes

import bpy

from .meshdata import MeshArrays, png_size

COLOR_ATTRIBUTE = "Color"
MATERIAL_NAME = "Hunyuan3D Vertex Colour"
UV_MAP = "UVMap"
# Each texture slot of a result: the Principled BSDF input it feeds and the image's colour space.
# A metallic/roughness map would add its slot here (through a Separate Color node).
TEXTURE_INPUTS = {"base_color": ("Base Color", "sRGB")}


def build_object(context: bpy.types.Context, arrays: MeshArrays, name: str) -> bpy.types.Object:
    """Create the mesh and its object at the 3D cursor, linked to the active collection, selected and active."""
    obj = bpy.data.objects.new(name, build_mesh(arrays, name))
    obj.location = context.scene.cursor.location
    view_layer = context.view_layer
    view_layer.active_layer_collection.collection.objects.link(obj)
    for other in context.selected_objects:
        other.select_set(False)
    obj.select_set(True)
    view_layer.objects.active = obj
    return obj


def build_mesh(arrays: MeshArrays, name: str) -> bpy.types.Mesh:
    """A new mesh datablock of ``arrays``, with its UV map and texture material, or its vertex colours and
    their material, when it has them."""
    mesh = bpy.data.meshes.new(name)
    fill_geometry(mesh, arrays)
    if arrays.corner_uvs is not None:
        add_uv_map(mesh, arrays.corner_uvs)
    if arrays.textures:
        mesh.materials.append(texture_material(name, arrays.textures))
    elif arrays.colors is not None:
        add_vertex_colors(mesh, arrays.colors)
        mesh.materials.append(vertex_color_material())
    return mesh


def fill_geometry(mesh: bpy.types.Mesh, arrays: MeshArrays) -> None:
    mesh.vertices.add(arrays.vertex_count)
    mesh.edges.add(len(arrays.edge_verts))
    mesh.loops.add(len(arrays.corner_verts))
    mesh.polygons.add(arrays.face_count)
    attributes = mesh.attributes
    if all(name in attributes for name in ("position", ".edge_verts", ".corner_vert", ".corner_edge")):
        attributes["position"].data.foreach_set("vector", arrays.positions.reshape(-1))
        attributes[".edge_verts"].data.foreach_set("value", arrays.edge_verts.reshape(-1))
        attributes[".corner_vert"].data.foreach_set("value", arrays.corner_verts)
        attributes[".corner_edge"].data.foreach_set("value", arrays.corner_edges)
    else:
        mesh.vertices.foreach_set("co", arrays.positions.reshape(-1))
        mesh.edges.foreach_set("vertices", arrays.edge_verts.reshape(-1))
        mesh.loops.foreach_set("vertex_index", arrays.corner_verts)
        mesh.loops.foreach_set("edge_index", arrays.corner_edges)
    set_face_starts(mesh, arrays.face_starts)
    mesh.update()  # with the edges present, Blender does not compute them again
    mesh.shade_smooth()


def set_face_starts(mesh: bpy.types.Mesh, face_starts) -> None:
    """Give a new mesh its face offsets (int32, one per face), in one copy where Blender allows it.

    ``MeshPolygon.loop_start`` is set through a setter function, so ``foreach_set`` sets it
    face by face (30-120 ns a face here: most of a 1M-triangle import). Each MeshPolygon is a
    view of one entry of the mesh's face offset array; when Blender reports the faces at
    consecutive int32 addresses and the last face's ``loop_start`` reads back at its address,
    the offsets are copied into that array at once. The array holds one entry more than the
    faces (the corner count, kept by Blender), so the copy stays inside it.
    """
    polygons = mesh.polygons
    count = len(face_starts)
    dtype = face_starts.dtype
    if (count and count == len(polygons) and dtype.kind == "i" and dtype.itemsize == 4
            and face_starts.flags.c_contiguous):
        first_address = polygons[0].as_pointer()
        last = polygons[count - 1]
        last.loop_start = int(face_starts[-1])
        last_address = last.as_pointer()
        if (last_address == first_address + 4 * (count - 1)
                and ctypes.c_int32.from_address(last_address).value == last.loop_start):
            ctypes.memmove(first_address, face_starts.ctypes.data, face_starts.nbytes)
            return
    polygons.foreach_set("loop_start", face_starts)


def add_vertex_colors(mesh: bpy.types.Mesh, colors) -> None:
    attribute = mesh.color_attributes.new(COLOR_ATTRIBUTE, "FLOAT_COLOR", "POINT")
    attribute.data.foreach_set("color", colors.reshape(-1))
    mesh.color_attributes.active_color = attribute
    mesh.color_attributes.render_color_index = mesh.color_attributes.active_color_index


def vertex_color_material() -> bpy.types.Material:
    """One shared material whose Base Color reads the colour attribute; made on first use."""
    material = bpy.data.materials.get(MATERIAL_NAME)
    if material is not None:
        return material
    material = bpy.data.materials.new(MATERIAL_NAME)
    material.use_nodes = True
    nodes = material.node_tree.nodes
    shader = next(node for node in nodes if node.type == "BSDF_PRINCIPLED")
    attribute = nodes.new("ShaderNodeVertexColor")
    attribute.layer_name = COLOR_ATTRIBUTE
    attribute.location = (shader.location.x - 300, shader.location.y)
    material.node_tree.links.new(attribute.outputs["Color"], shader.inputs["Base Color"])
    return material


def add_uv_map(mesh: bpy.types.Mesh, corner_uvs) -> None:
    layer = mesh.uv_layers.new(name=UV_MAP)
    layer.data.foreach_set("uv", corner_uvs.reshape(-1))
    mesh.uv_layers.active = layer


def packed_image(name: str, png: bytes) -> bpy.types.Image:
    """An image holding ``png`` packed into the .blend (no file on disk to lose)."""
    width, height = png_size(png, name)
    image = bpy.data.images.new(name, width, height, alpha=False)
    image.pack(data=png, data_len=len(png))
    image.source = "FILE"
    return image


def texture_material(name: str, textures: dict[str, bytes]) -> bpy.types.Material:
    """A material of its own for a textured result: each texture in an Image Texture node, packed, read through the UV map."""
    material = bpy.data.materials.new(name)
    material.use_nodes = True
    nodes, links = material.node_tree.nodes, material.node_tree.links
    shader = next(node for node in nodes if node.type == "BSDF_PRINCIPLED")
    for row, (slot, png) in enumerate(sorted(textures.items())):
        if slot not in TEXTURE_INPUTS:
            continue  # a map a newer backend paints; this add-on does not know where it goes
        socket, colour_space = TEXTURE_INPUTS[slot]
        node = nodes.new("ShaderNodeTexImage")
        node.image = packed_image(f"{name} {slot.replace('_', ' ')}", png)
        node.image.colorspace_settings.name = colour_space
        node.location = (shader.location.x - 400, shader.location.y - 300 * row)
        links.new(node.outputs["Color"], shader.inputs[socket])
    shader.inputs["Metallic"].default_value = 0.0
    shader.inputs["Roughness"].default_value = 1.0
    return material
