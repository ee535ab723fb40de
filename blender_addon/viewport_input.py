"""Input pictures from inside Blender, and where a result made from them goes. Main thread only.

``render_camera_view`` renders the scene's active camera at the scene's render resolution
(Workbench by default: quick, what the Solid viewport shows; or the scene's own engine) on
a transparent background; ``editor_image_file`` gives the file of an image Blender holds
(the one an Image Editor shows, or one chosen). Both write PNGs into the add-on's user
folder, kept so Regenerate can read the picture again. ``image_editor_space`` finds the
Image Editor that shows a result's pictures the other way, from the History.

``placement_for`` turns the panel's options into a ``Placement``: into the selected box or
empty when Into Selected is on, and, for a camera view, turned so the result's front faces
the camera that took the picture.
"""

from __future__ import annotations

import contextlib
import os
import time

import bpy

from . import preferences
from .errors import AddonError
from .placement import Placement, facing_away_from
from .recipe import PROPERTY

INPUTS_FOLDER = "inputs"
FILE_TYPES = (".png", ".jpg", ".jpeg")  # what a file on disk may be to be sent as it is


class ViewportInputError(AddonError):
    """A picture can't be taken from the scene as things stand."""


def render_camera_view(context: bpy.types.Context, engine: str = "BLENDER_WORKBENCH") -> tuple[str, tuple[float, float, float]]:
    """Render the active camera to a new PNG; returns its path and the camera's view direction (world)."""
    scene = context.scene
    camera = scene.camera
    if camera is None:
        raise ViewportInputError("The scene has no active camera",
                                 "add a camera and make it active (View > Cameras > Set Active Object as Camera)")
    path = _new_input_path("camera")
    render, settings = scene.render, scene.render.image_settings
    with _temporarily(render, engine=engine or render.engine, film_transparent=True), \
            _temporarily(settings, file_format="PNG", color_mode="RGBA"):
        try:
            bpy.ops.render.render()
            bpy.data.images["Render Result"].save_render(path, scene=scene)
        except (RuntimeError, KeyError) as exc:
            other = "Workbench" if engine != "BLENDER_WORKBENCH" else "Scene's Engine"
            raise ViewportInputError(f"Blender could not render the camera view: {blender_message(exc)}",
                                     f"press F12 to see what the render says, or choose {other} beside the button") from None
    view = camera.matrix_world.to_3x3().col[2]  # a camera looks along its local -Z
    return path, (-view.x, -view.y, -view.z)


def editor_image_file(context: bpy.types.Context, image: bpy.types.Image | None) -> str:
    """A PNG or JPEG file of ``image`` (None: the one an open Image Editor shows) to send as the input picture.

    An unchanged PNG or JPEG file on disk is used where it is; anything else (a render, a
    painted or packed image, another format) is saved as a new PNG the way Blender shows it.
    """
    image = image or shown_in_image_editor(context)
    if image is None:
        raise ViewportInputError("No image chosen and no Image Editor shows one",
                                 "open the image in an Image Editor, or pick it in the field beside the button")
    source = bpy.path.abspath(image.filepath) if image.filepath else ""
    if (image.source == "FILE" and image.packed_file is None and not image.is_dirty
            and source.lower().endswith(FILE_TYPES) and os.path.isfile(source)):
        return source
    path = _new_input_path("image")
    settings = context.scene.render.image_settings
    with _temporarily(settings, file_format="PNG", color_mode="RGBA"):
        try:
            image.save_render(path, scene=context.scene)
        except RuntimeError as exc:
            raise ViewportInputError(f"Can't save the image {image.name}: {blender_message(exc)}", "render or load it first") from None
    return path


def blender_message(error: Exception) -> str:
    """What an operator or image error says, without the "Error:" Blender puts before it."""
    return str(error).strip().removeprefix("Error:").strip()


def shown_in_image_editor(context: bpy.types.Context) -> bpy.types.Image | None:
    for window in context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "IMAGE_EDITOR" and area.spaces.active.image is not None:
                return area.spaces.active.image
    return None


def image_editor_space(context: bpy.types.Context) -> bpy.types.SpaceImageEditor | None:
    """An open Image Editor (this window's first), else the largest area of a new window turned into one;
    None where no window can be opened (background mode)."""
    windows = sorted(context.window_manager.windows, key=lambda window: window != context.window)
    for window in windows:
        for area in window.screen.areas:
            if area.type == "IMAGE_EDITOR":
                return area.spaces.active
    if not bpy.ops.wm.window_new.poll():
        return None
    bpy.ops.wm.window_new()
    area = max(context.window_manager.windows[-1].screen.areas, key=lambda area: area.width * area.height)
    area.type = "IMAGE_EDITOR"
    return area.spaces.active


def target_box(context: bpy.types.Context) -> bpy.types.Object | None:
    """The active object when it can hold a result: an empty, or a mesh the add-on did not make."""
    obj = context.active_object
    if obj is None or obj.type not in ("EMPTY", "MESH") or (obj.type == "MESH" and PROPERTY in obj):
        return None
    return obj


def target_problem(context: bpy.types.Context, into_selected: bool) -> str:
    """Why Generate can't place into the selection ("" when it can, or when the option is off)."""
    if into_selected and target_box(context) is None:
        return "Into Selected is on: make a box (a mesh) or an empty the active object, or turn it off"
    return ""


def placement_for(context: bpy.types.Context, inputs, how: str = "cursor", **extra) -> Placement | None:
    """Where a result of the panel's inputs goes: ``how`` ("cursor" or "row"), or into the selected box when
    Into Selected is on (for "cursor"), facing the camera when the input picture is that camera's view."""
    facing = None
    if inputs.source == "IMAGE" and inputs.camera_picture and inputs.image_path == inputs.camera_picture:
        facing = facing_away_from(tuple(inputs.camera_view))
    if how == "cursor" and inputs.into_selected:
        box = target_box(context)
        if box is not None:
            return Placement("into", target=box.name, facing=facing)
    if how == "cursor" and facing is None:
        return None
    return Placement(how, facing=facing, **extra)


def _new_input_path(kind: str) -> str:
    folder = os.path.join(preferences.user_dir(), INPUTS_FOLDER)
    os.makedirs(folder, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for number in range(1000):
        path = os.path.join(folder, f"{kind}-{stamp}{f'-{number}' if number else ''}.png")
        if not os.path.exists(path):
            return path
    raise ViewportInputError(f"Too many pictures named {kind}-{stamp} in {folder}", "wait a second and try again")


@contextlib.contextmanager
def _temporarily(owner, **values):
    """Set attributes for the duration of a block, and put the old values back after it."""
    before = {name: getattr(owner, name) for name in values}
    try:
        for name, value in values.items():
            setattr(owner, name, value)
        yield
    finally:
        for name, value in before.items():
            setattr(owner, name, value)
