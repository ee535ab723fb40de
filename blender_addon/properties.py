"""What the artist is about to generate: model, input and parameters (no secrets, not saved in .blend files).

The parameter list is not hard-coded: it mirrors what the connected backend says each
pipeline takes, so new models and plug-ins get their fields without an add-on update.
The inputs live on the window manager, which a file load replaces; ``snapshot`` and
``restore`` carry them across (``app`` calls them around every load).
"""

from __future__ import annotations

import os
from typing import Any

import bpy
from bpy.props import (
    BoolProperty,
    CollectionProperty,
    EnumProperty,
    FloatProperty,
    FloatVectorProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)

from . import app, viewport_input
from .finishing import HY3D_FinishingInputs
from .session import GenerationRequest

NO_PIPELINE = "NONE"
_enum_cache: dict[str, list[tuple[str, str, str]]] = {}  # Blender needs enum item strings kept alive


def _pipeline_items(self, context):
    session = app.session
    # A pipeline that paints a mesh it is sent is reached through Texture Selected, not Generate.
    items = [(p["name"], p["name"], p.get("description", "")) for p in (session.pipelines() if session else [])
             if "mesh" not in p.get("inputs", [])]
    _enum_cache["pipelines"] = items or [(NO_PIPELINE, "Connect First", "The model list comes from the backend")]
    return _enum_cache["pipelines"]


def _choice_items(self, context):
    key = f"choices:{self.choices}"
    if key not in _enum_cache:
        _enum_cache[key] = [(c, c, "") for c in self.choices.split("\n") if c]
    return _enum_cache[key]


class HY3D_ParamValue(bpy.types.PropertyGroup):
    """One pipeline parameter; ``kind`` says which of the value fields is used."""

    kind: StringProperty()
    advanced: BoolProperty()
    choices: StringProperty()
    int_value: IntProperty()
    float_value: FloatProperty(precision=3)
    string_value: StringProperty()
    bool_value: BoolProperty()
    choice_value: EnumProperty(items=_choice_items)

    @property
    def value_field(self) -> str:
        if self.kind == "str" and self.choices:
            return "choice_value"
        return {"int": "int_value", "float": "float_value", "bool": "bool_value"}.get(self.kind, "string_value")

    @property
    def value(self) -> Any:
        return getattr(self, self.value_field)

    def set(self, value: Any) -> None:
        if value is not None:
            setattr(self, self.value_field, value)


class HY3D_ViewPath(bpy.types.PropertyGroup):
    """One more picture a multiview model takes, under its input name (``name``: left, back, right)."""

    path: StringProperty(subtype="FILE_PATH", description="PNG or JPEG of the object seen from this side (optional)")


def extra_views(info: dict[str, Any]) -> list[str]:
    """The named pictures a model takes besides the main image and the prompt."""
    accepted = info.get("inputs", [])
    return [name for name in accepted if name not in ("image", "text")] if "image" in accepted else []


def _file_problem(path: str, what: str) -> str:
    if not os.path.isfile(path):
        return f"{what} not found: {path}"
    if not os.access(path, os.R_OK):
        return f"Can't read the {what.lower()} {path}"
    return ""


def _on_pipeline_change(self, context):
    sync_params(self)


class HY3D_GenerationInputs(bpy.types.PropertyGroup):
    pipeline: EnumProperty(name="Model", items=_pipeline_items, update=_on_pipeline_change)
    source: EnumProperty(name="Input", items=(("IMAGE", "Image", "Make the object shown in a picture"),
                                              ("TEXT", "Text", "Describe the object in words")))
    image_path: StringProperty(name="Image", subtype="FILE_PATH", description="PNG or JPEG of the object")
    prompt: StringProperty(name="Prompt", description="What to make, e.g. a wooden chair")
    params: CollectionProperty(type=HY3D_ParamValue)
    views: CollectionProperty(type=HY3D_ViewPath)
    show_advanced: BoolProperty(name="Advanced")
    finishing: bpy.props.PointerProperty(type=HY3D_FinishingInputs)
    variations: IntProperty(name="Variations", default=3, min=1, max=16,
                            description="How many new seeds Variations and Preview Variations try, one queued job each")
    into_selected: BoolProperty(name="Into Selected",
                                description="Scale and place the result to fit the active box (a mesh) or empty: "
                                            "the largest uniform fit, centred, resting on its bottom")
    camera_render: EnumProperty(name="Render With", items=(
        ("WORKBENCH", "Workbench", "Quick: the scene as the Solid viewport shows it"),
        ("SCENE", "Scene's Engine", "The scene's own render engine and settings (slower)")))
    editor_image: PointerProperty(type=bpy.types.Image, name="Picture",
                                  description="The image Use Image sends; empty: the one an open Image Editor shows")
    camera_picture: StringProperty(options={"HIDDEN"})  # the camera view last rendered: while it is the image, results face that camera
    camera_view: FloatVectorProperty(size=3, options={"HIDDEN"})  # that camera's view direction (world)

    def pipeline_info(self) -> dict[str, Any] | None:
        session = app.session
        return next((p for p in (session.pipelines() if session else []) if p["name"] == self.pipeline), None)

    def problem(self, previews: bool = False) -> str:
        """Why Generate (or, with ``previews``, Preview Variations, which ignores Into Selected) can't run with
        these inputs, in a few words ("" when it can)."""
        if self.pipeline_info() is None:
            return "Choose a model first"
        into_problem = viewport_input.target_problem(bpy.context, self.into_selected and not previews)
        if into_problem:
            return into_problem
        if self.source == "TEXT":
            return "" if self.prompt.strip() else "Type a prompt first"
        if not self.image_path:
            return "Choose an image first"
        problems = (_file_problem(bpy.path.abspath(self.image_path), "Image"),
                    *(_file_problem(bpy.path.abspath(v.path), f"{v.name.title()} view") for v in self.views if v.path))
        return next((p for p in problems if p), "")

    def paint_pipeline(self) -> dict[str, Any] | None:
        """The backend's pipeline that paints a mesh it is sent (Texture Selected), if it has one."""
        session = app.session
        return next((p for p in (session.pipelines() if session else []) if "mesh" in p.get("inputs", [])), None)

    def texture_problem(self) -> str:
        """Why Texture Selected can't run with these inputs ("" when it can): it paints from Generate's image or prompt."""
        if self.paint_pipeline() is None:
            return "The backend has no texture model"
        if self.source == "TEXT":
            return "" if self.prompt.strip() else "Type a prompt first"
        if not self.image_path:
            return "Choose an image first"
        return _file_problem(bpy.path.abspath(self.image_path), "Image")

    def texture_request(self, mesh) -> GenerationRequest:
        """Texture Selected's job: ``mesh`` with the image or prompt, and the texture settings the paint model shares with this model."""
        paint = self.paint_pipeline()
        names = {p["name"] for p in paint.get("params", [])}
        params = {p.name: p.value for p in self.params if p.name in names}
        if self.source == "IMAGE":
            return GenerationRequest(paint["name"], params, image_path=bpy.path.abspath(self.image_path), mesh=mesh)
        return GenerationRequest(paint["name"], params, text=self.prompt, mesh=mesh)

    def request(self) -> GenerationRequest:
        finishing = self.finishing.options()
        params = finishing.backend_params({p.name: p.value for p in self.params})
        if self.source == "IMAGE":
            return GenerationRequest(self.pipeline, params, image_path=bpy.path.abspath(self.image_path),
                                     views={v.name: bpy.path.abspath(v.path) for v in self.views if v.path}, finishing=finishing)
        return GenerationRequest(self.pipeline, params, text=self.prompt, finishing=finishing)

    def plan_request(self) -> GenerationRequest | None:
        """What to plan: the request Generate would send (a picture not chosen yet still names its input);
        None without a model, or without a prompt for a text input."""
        if self.pipeline_info() is None or self.source == "TEXT" and not self.prompt.strip():
            return None
        return self.request()


def sync_params(inputs: HY3D_GenerationInputs) -> None:
    """Rebuild the parameter and extra view fields for the chosen pipeline, keeping what it shares with the last one."""
    info = inputs.pipeline_info()
    kept = {p.name: (p.kind, p.value) for p in inputs.params}
    kept_views = {v.name: v.path for v in inputs.views}
    inputs.params.clear()
    inputs.views.clear()
    if info is None:
        return
    for name in extra_views(info):
        view = inputs.views.add()
        view.name, view.path = name, kept_views.get(name, "")
    for spec in info.get("params", []):
        item = inputs.params.add()
        item.name, item.kind, item.advanced = spec["name"], spec["type"], bool(spec.get("advanced"))
        item.choices = "\n".join(spec.get("choices") or ())
        old = kept.get(spec["name"])
        item.set(old[1] if old and old[0] == item.kind else spec.get("default"))
    accepted = info.get("inputs", [])
    if inputs.source == "IMAGE" and "image" not in accepted and "text" in accepted:
        inputs.source = "TEXT"
    elif inputs.source == "TEXT" and "text" not in accepted and "image" in accepted:
        inputs.source = "IMAGE"


def snapshot(inputs: HY3D_GenerationInputs) -> dict[str, Any]:
    """The inputs as plain data, to outlive the window manager they are stored on."""
    return {"pipeline": inputs.pipeline, "source": inputs.source, "image_path": inputs.image_path, "prompt": inputs.prompt,
            "params": {p.name: (p.kind, p.value) for p in inputs.params}, "views": {v.name: v.path for v in inputs.views},
            "viewport": {"into_selected": inputs.into_selected, "camera_render": inputs.camera_render,
                         "camera_picture": inputs.camera_picture, "camera_view": tuple(inputs.camera_view)},
            "finishing": inputs.finishing.options()}


def load_request(inputs: HY3D_GenerationInputs, request: GenerationRequest) -> None:
    """Put a request's model, input and parameter values in the fields (Load Settings)."""
    restore(inputs, {"pipeline": request.pipeline, "source": "IMAGE" if request.image_path else "TEXT",
                     "image_path": request.image_path or "", "prompt": request.text or "", "views": request.views,
                     "params": {name: (type(value).__name__, value) for name, value in request.params.items()},
                     "finishing": request.finishing})


def restore(inputs: HY3D_GenerationInputs, kept: dict[str, Any]) -> None:
    """Put kept inputs back, with the parameter fields rebuilt for the chosen model and the values the user set."""
    inputs.image_path, inputs.prompt, inputs.source = kept["image_path"], kept["prompt"], kept["source"]
    for name, value in kept.get("viewport", {}).items():
        setattr(inputs, name, value)
    inputs.finishing.load(kept["finishing"])
    if any(item[0] == kept["pipeline"] for item in _pipeline_items(inputs, None)):
        inputs.pipeline = kept["pipeline"]  # its update rebuilds the fields
    sync_params(inputs)
    for view in inputs.views:
        view.path = kept["views"].get(view.name, "")
    for param in inputs.params:
        old = kept["params"].get(param.name)
        if old is not None and old[0] == param.kind:
            param.set(old[1])


classes = (HY3D_ParamValue, HY3D_ViewPath, HY3D_FinishingInputs, HY3D_GenerationInputs)


def register() -> None:
    bpy.types.WindowManager.hy3d = bpy.props.PointerProperty(type=HY3D_GenerationInputs)


def unregister() -> None:
    del bpy.types.WindowManager.hy3d
