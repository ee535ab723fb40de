"""Draw the add-on's sidebar panel as PNG pictures for docs/addon.md, from the panel's own draw() code.

Blender as a Python module (the ``bpy`` wheel) can't draw its interface, so this script installs
the add-on built by build.py in a fresh Blender with its user folders in a temporary place,
starts the backend and makes a mesh with Nano (the model that ships with the backend), then calls
the draw() of every sidebar panel the add-on registers, whatever they contain, with a layout
that records each call (labels, fields, buttons, progress bars, rows, columns, boxes). The
recording is drawn with Pillow, roughly in Blender's default dark theme. The states drawn:

- ``panel_idle.png``: a picture and Nano chosen, with the plan under Generate (after one job,
  so it has the time);
- ``panel_options.png``: the same with every sub-panel open (Advanced, Finishing, From the Scene,
  History, with the result's fold-out open on its pictures: a placeholder stands for each preview,
  which Blender renders only in its interface);
- ``panel_running.png``: a job running, with its progress bar and Cancel;
- ``panel_result.png``: the result selected, with Regenerate, Load Settings and Variations.

Usage (Python 3.11 with the ``bpy`` wheel, as for the tests)::

    python tools/panel_pictures.py [--out docs/images] [--width 320]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "bl_ext.user_default.hunyuan3d_blender"
CATEGORY = "Hunyuan3D"
WAIT_S = 120.0


# -- recording ------------------------------------------------------------------------------------


@dataclass
class Item:
    """One thing a panel drew: ``kind`` is label, operator, prop, progress, separator, fold (a fold-out's triangle),
    picture (a preview icon) or the name of a call not known here."""

    kind: str
    text: str = ""
    icon: str = "NONE"
    value: Any = None  # prop: the value shown; progress: the fraction; fold: open; picture: its size in icon heights
    prop_type: str = ""  # prop: BOOLEAN, ENUM, INT, FLOAT, STRING, ...
    choices: list[str] = field(default_factory=list)  # an expanded enum's item names
    expand: bool = False


class RecordingLayout:
    """Stands in for a UILayout: records what would be shown, with its rows, columns and boxes."""

    def __init__(self, kind: str = "column", open_folds: bool = False):
        self.kind = kind
        self.open_folds = open_folds  # draw fold-outs (``panel``) open, whatever their default
        self.items: list[Item | RecordingLayout] = []
        self.scale_y = 1.0
        self.scale_x = 1.0
        self.enabled = True
        self.active = True
        self.alert = False

    def _child(self, kind: str) -> RecordingLayout:
        child = RecordingLayout(kind, self.open_folds)
        self.items.append(child)
        return child

    def row(self, align: bool = False, **_options: Any) -> RecordingLayout:
        return self._child("row")

    def column(self, align: bool = False, **_options: Any) -> RecordingLayout:
        return self._child("column")

    def box(self) -> RecordingLayout:
        return self._child("box")

    def split(self, factor: float = 0.0, align: bool = False) -> RecordingLayout:
        return self._child("row")

    def label(self, text: str = "", icon: str = "NONE", **_options: Any) -> None:
        self.items.append(Item("label", text, icon))

    def panel(self, idname: str, default_closed: bool = False) -> tuple[RecordingLayout, RecordingLayout | None]:
        """A fold-out: its header row, and its body while open."""
        is_open = self.open_folds or not default_closed
        header = self._child("row")
        header.items.append(Item("fold", value=is_open))
        return header, self._child("column") if is_open else None

    def template_icon(self, icon_value: int = 0, scale: float = 1.0) -> None:
        self.items.append(Item("picture", "preview", value=scale))

    def separator(self, **_options: Any) -> None:
        self.items.append(Item("separator"))

    def progress(self, factor: float = 0.0, type: str = "BAR", text: str = "") -> None:
        self.items.append(Item("progress", text, value=factor))

    def operator(self, idname: str, text: str | None = None, icon: str = "NONE", **_options: Any) -> types.SimpleNamespace:
        self.items.append(Item("operator", operator_label(idname) if text is None else text, icon))
        return types.SimpleNamespace()  # takes the operator's properties, as Blender's OperatorProperties would

    def prop(self, data: Any, name: str, text: str | None = None, icon: str = "NONE", expand: bool = False, **_options: Any) -> None:
        rna = data.bl_rna.properties[name]
        value = getattr(data, name)
        choices = []
        if rna.type == "ENUM":
            items = {item.identifier: item.name for item in rna.enum_items} or {
                identifier: label for identifier, label, *_ in (data.bl_rna.properties[name].enum_items_static or [])}
            if not items:  # items from a function: Blender lists them for this data
                items = {value: value}
            choices = list(items.values()) if expand else []
            value = items.get(value, value)
        self.items.append(Item("prop", rna.name if text is None else text, icon, value, rna.type, choices, expand))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)

        def record(*_args: Any, **_kwargs: Any) -> RecordingLayout:
            self.items.append(Item(name, name))
            return self._child("column")

        return record


def operator_label(idname: str) -> str:
    import bpy

    module, name = idname.split(".")
    return getattr(getattr(bpy.ops, module), name).get_rna_type().name


@dataclass
class DrawnPanel:
    title: str
    closed: bool
    layout: RecordingLayout
    depth: int


def draw_sidebar(context: Any, open_all: bool = False) -> list[DrawnPanel]:
    """Every panel of the add-on's sidebar tab that polls true, parents before their children, drawn into recordings;
    panels closed by default stay closed unless ``open_all``."""
    import bpy

    ours = [cls for cls in bpy.types.Panel.__subclasses__()
            if getattr(cls, "bl_category", "") == CATEGORY and cls.__module__.startswith(PACKAGE)]
    by_id = {getattr(cls, "bl_idname", cls.__name__): cls for cls in ours}
    drawn: list[DrawnPanel] = []

    def visit(parent: str | None, depth: int) -> None:
        for cls in ours:
            if getattr(cls, "bl_parent_id", None) != parent:
                continue
            if hasattr(cls, "poll") and not cls.poll(context):
                continue
            closed = not open_all and "DEFAULT_CLOSED" in getattr(cls, "bl_options", set())
            layout = RecordingLayout(open_folds=open_all)
            if not closed:
                cls.draw(types.SimpleNamespace(layout=layout, bl_label=cls.bl_label), context)
            drawn.append(DrawnPanel(cls.bl_label, closed, layout, depth))
            if not closed:
                visit(getattr(cls, "bl_idname", cls.__name__), depth + 1)

    visit(None, 0)
    missing = [name for name, cls in by_id.items() if getattr(cls, "bl_parent_id", None) not in (None, *by_id)]
    if missing:
        raise SystemExit(f"panels whose parent is not in the tab: {', '.join(missing)}")
    return drawn


# -- the states -----------------------------------------------------------------------------------


def capture(zip_path: Path, work: Path) -> dict[str, list[DrawnPanel]]:
    import bpy

    result = bpy.ops.extensions.package_install_files(filepath=str(zip_path), repo="user_default", enable_on_install=True)
    if result != {"FINISHED"} or PACKAGE not in bpy.context.preferences.addons:
        raise SystemExit(f"could not install {zip_path}: {result}")
    prefs = bpy.context.preferences.addons[PACKAGE].preferences
    prefs.connection, prefs.python_path, prefs.device = "LAUNCH", sys.executable, "cpu"
    prefs.output_dir = str(work / "outputs")
    app = sys.modules[f"{PACKAGE}.app"]

    def pump_until(condition: Any, what: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while not condition():
            if time.monotonic() > deadline:
                raise SystemExit(f"gave up waiting for {what}: {app.session.phase}, {app.session.last}, {app.session.problem}")
            app.pump()
            time.sleep(0.01)

    bpy.ops.hy3d.connect()
    pump_until(lambda: app.session.phase.value != "starting", "the backend to start")
    if app.session.phase.value != "ready":
        raise SystemExit(f"the backend did not start: {app.session.problem}")
    inputs = bpy.context.window_manager.hy3d
    inputs.pipeline, inputs.source = "nano", "IMAGE"
    inputs.image_path = str(ROOT / "examples" / "snowman.png")
    inputs.params["resolution"].set(96)
    bpy.ops.hy3d.generate()
    pump_until(lambda: app.session.job is None, "the first job")
    has_time = lambda: app.session.plan is not None and app.session.plan.get("time") is not None  # noqa: E731
    pump_until(has_time, "the plan after the job")
    states = {"result": draw_sidebar(bpy.context)}

    bpy.ops.object.select_all(action="DESELECT")
    bpy.context.view_layer.objects.active = None
    app.session.last = None
    inputs.params["resolution"].set(128)
    pump_until(lambda: has_time() and app.session.plan["params"]["resolution"] == 128, "the plan for the new resolution")
    states["idle"] = draw_sidebar(bpy.context)
    states["options"] = draw_sidebar(bpy.context, open_all=True)

    inputs.params["resolution"].set(256)
    bpy.ops.hy3d.generate()
    pump_until(lambda: app.session.job is not None and app.session.job.stage == "mesh" and (app.session.job.step or 0) >= 2,
               "the job's mesh stage")
    states["running"] = draw_sidebar(bpy.context)
    bpy.ops.hy3d.cancel()
    pump_until(lambda: app.session.job is None, "the cancelled job to end")
    app.session.close()
    bpy.ops.preferences.addon_disable(module=PACKAGE)
    return states


# -- drawing --------------------------------------------------------------------------------------

THEME = {"background": (48, 48, 48), "header": (61, 61, 61), "text": (230, 230, 230), "dim": (160, 160, 160),
         "button": (84, 84, 84), "field": (29, 29, 29), "selected": (71, 114, 179), "box": (40, 40, 40), "border": (25, 25, 25)}
ICON_COLOURS = {"ERROR": (230, 140, 40), "INFO": (110, 150, 220), "CHECKMARK": (110, 190, 110), "CANCEL": (200, 80, 80)}
LINE = 22
GAP = 3
PAD = 6
ICON_ONLY = 26
FOLD = 16  # a fold-out's triangle
ICON_UNIT = 20  # Blender's icon height at scale 1


class Painter:
    def __init__(self, width: int, scale: int = 2):
        from PIL import ImageFont

        self.width, self.scale = width, scale
        self.font = ImageFont.load_default(size=12 * scale)

    # Sizes are in layout pixels; drawing multiplies by ``scale`` for a sharp picture.
    def height(self, node: Item | RecordingLayout, width: int) -> int:
        if isinstance(node, Item):
            return 8 if node.kind == "separator" else self.picture_size(node) if node.kind == "picture" else LINE
        if node.kind == "row":
            return int(max((self.height(child, width) for child in node.items), default=0) * node.scale_y)
        inner = [self.height(child, width - 2 * PAD * (node.kind == "box")) for child in node.items]
        total = sum(inner) + GAP * max(0, len(inner) - 1)
        return int(total * node.scale_y) + (2 * PAD if node.kind == "box" and inner else 0)

    def picture(self, panels: list[DrawnPanel]) -> Any:
        from PIL import Image, ImageDraw

        heights = [LINE + 4 + (0 if p.closed else self.height(p.layout, self.width - 2 * PAD - 8 * p.depth) + 2 * PAD) for p in panels]
        image = Image.new("RGB", (self.width * self.scale, (sum(heights) + 4 * len(panels) + 4) * self.scale), THEME["background"])
        self.draw = ImageDraw.Draw(image)
        y = 4
        for panel, height in zip(panels, heights):
            x = 4 + 8 * panel.depth
            self.rect(x, y, self.width - 4 - x, LINE + 4, THEME["header"])
            self.triangle(x + 8, y + (LINE + 4) // 2, down=not panel.closed)
            self.text(panel.title, x + 18, y, self.width - x - 24, LINE + 4, THEME["text"])
            if not panel.closed:
                self.node(panel.layout, x + PAD, y + LINE + 4 + PAD, self.width - 2 * PAD - x - 4)
            y += height + 4
        return image

    def node(self, node: Item | RecordingLayout, x: int, y: int, width: int) -> None:
        if isinstance(node, Item):
            self.item(node, x, y, width)
            return
        if node.kind == "box" and node.items:
            self.rect(x, y, width, self.height(node, width), THEME["box"], outline=THEME["border"])
            x, y, width = x + PAD, y + PAD, width - 2 * PAD
        if node.kind == "row":
            narrow = [child for child in node.items if isinstance(child, Item) and child.kind in ("operator", "prop") and not child.text
                      and child.prop_type not in ("ENUM", "INT", "FLOAT", "STRING")]
            fixed = {id(child): self.picture_size(child) if child.kind == "picture" else FOLD
                     for child in node.items if isinstance(child, Item) and child.kind in ("picture", "fold")}
            wide = len(node.items) - len(narrow) - len(fixed)
            share = (width - ICON_ONLY * len(narrow) - sum(fixed.values()) - GAP * (len(node.items) - 1)) // max(1, wide)
            height = self.height(node, width)
            for child in node.items:
                w = ICON_ONLY if child in narrow else fixed.get(id(child), share)
                self.node(child, x, y, w) if not isinstance(child, Item) else self.item(child, x, y, w, height)
                x += w + GAP
            return
        for child in node.items:
            self.node(child, x, y, width)
            y += int(self.height(child, width) * node.scale_y) + GAP

    def item(self, item: Item, x: int, y: int, width: int, height: int = LINE) -> None:
        text_x = x + 4
        if item.icon not in ("NONE", "BLANK1") and item.kind == "label":
            colour = ICON_COLOURS.get(item.icon, THEME["dim"])
            self.draw.ellipse(self.box(x + 3, y + height // 2 - 5, 10, 10), fill=colour)
            text_x = x + 18
        elif item.icon == "BLANK1":
            text_x = x + 18
        if item.kind == "label":
            self.text(item.text, text_x, y, width - (text_x - x), height, THEME["text"])
        elif item.kind == "operator":
            self.rect(x, y, width, height, THEME["button"])
            self.text(item.text or "·", x, y, width, height, THEME["text"], centred=True)
        elif item.kind == "progress":
            self.rect(x, y, width, height, THEME["field"])
            self.rect(x, y, max(2, int(width * float(item.value or 0))), height, THEME["selected"])
            self.text(item.text, x, y, width, height, THEME["text"], centred=True)
        elif item.kind == "prop":
            self.prop(item, x, y, width, height)
        elif item.kind == "fold":
            self.triangle(x + 8, y + height // 2, down=item.value)
        elif item.kind == "picture":
            size = self.picture_size(item)
            self.rect(x, y, size, size, THEME["field"], outline=THEME["dim"])
            self.text(item.text, x, y, size, size, THEME["dim"], centred=True)
        elif item.kind != "separator":
            self.rect(x, y, width, height, THEME["box"], outline=THEME["dim"])
            self.text(f"({item.text})", x, y, width, height, THEME["dim"], centred=True)

    def prop(self, item: Item, x: int, y: int, width: int, height: int) -> None:
        if item.prop_type == "BOOLEAN":
            self.rect(x + 2, y + 4, height - 8, height - 8, THEME["selected"] if item.value else THEME["button"])
            self.text(item.text, x + height, y, width - height, height, THEME["text"])
        elif item.prop_type == "ENUM" and item.expand:
            share = width // max(1, len(item.choices))
            for index, choice in enumerate(item.choices):
                colour = THEME["selected"] if choice == item.value else THEME["button"]
                self.rect(x + index * share, y, share - 1, height, colour)
                self.text(choice, x + index * share, y, share, height, THEME["text"], centred=True)
        elif item.prop_type in ("INT", "FLOAT"):
            self.rect(x, y, width, height, THEME["button"])
            value = f"{item.value:.3f}".rstrip("0").rstrip(".") if item.prop_type == "FLOAT" else str(item.value)
            self.text(item.text, x + 4, y, width // 2, height, THEME["text"])
            self.text(value, x + width // 2, y, width // 2 - 6, height, THEME["text"], right=True)
        else:
            label_width = width * 2 // 5 if item.text else 0
            if item.text:
                self.text(item.text, x, y, label_width - 4, height, THEME["dim"], right=True)
            value = str(item.value)
            if item.prop_type == "STRING" and os.sep in value:
                value = os.path.basename(value)
            self.rect(x + label_width, y, width - label_width, height, THEME["field"] if item.prop_type == "STRING" else THEME["button"])
            self.text(value, x + label_width + 4, y, width - label_width - 20, height, THEME["text"])
            if item.prop_type == "ENUM":
                self.triangle(x + width - 12, y + height // 2, down=True)

    @staticmethod
    def picture_size(item: Item) -> int:
        return int(ICON_UNIT * item.value)

    def triangle(self, x: int, y: int, down: bool) -> None:
        s = self.scale
        points = [(x - 4, y - 2), (x + 4, y - 2), (x, y + 3)] if down else [(x - 2, y - 4), (x - 2, y + 4), (x + 3, y)]
        self.draw.polygon([(px * s, py * s) for px, py in points], fill=THEME["text"])

    def box(self, x: int, y: int, w: int, h: int) -> tuple[int, int, int, int]:
        s = self.scale
        return x * s, y * s, (x + w) * s, (y + h) * s

    def rect(self, x: int, y: int, w: int, h: int, fill: tuple[int, int, int], outline: tuple[int, int, int] | None = None) -> None:
        self.draw.rounded_rectangle(self.box(x, y, w, h), radius=3 * self.scale, fill=fill, outline=outline)

    def text(self, text: str, x: int, y: int, width: int, height: int, colour: tuple[int, int, int],
             centred: bool = False, right: bool = False) -> None:
        limit = max(0, width - 4) * self.scale
        while text and self.font.getlength(text) > limit:
            text = text[:-2] + "…" if len(text) > 2 else ""
        length = self.font.getlength(text)
        left = x * self.scale + ((limit - length) / 2 if centred else limit - length if right else 0)
        self.draw.text((left, (y + height / 2) * self.scale), text, font=self.font, fill=colour, anchor="lm")


# -- main -----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images", help="folder for the PNG files (default docs/images)")
    parser.add_argument("--width", type=int, default=320, help="the sidebar's width in pixels (default 320; drawn at twice that)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        built = subprocess.run([sys.executable, str(ROOT / "build.py"), "--output-dir", str(work)],
                               check=False, capture_output=True, text=True)
        if built.returncode != 0:
            raise SystemExit(f"build.py failed:\n{built.stderr}")
        # Blender reads these when bpy is imported: its user folders and the backend's data stay in the temporary folder.
        os.environ["BLENDER_USER_RESOURCES"] = str(work / "blender-user")
        os.environ["HY3D_HOME"] = str(work / "home")
        states = capture(Path(built.stdout.strip()), work)
    args.out.mkdir(parents=True, exist_ok=True)
    painter = Painter(args.width)
    for name, panels in states.items():
        path = args.out / f"panel_{name}.png"
        painter.picture(panels).save(path, optimize=True)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
