"""Build the installable Blender add-on: one zip holding the add-on and the backend it launches.

    python build.py            writes dist/<id>-<version>.zip and checks it with Blender's validator

The zip has a single top folder named after the extension id, so Blender installs it both
as an extension (Get Extensions > Install from Disk) and as a legacy add-on. Entries are
sorted and carry a fixed timestamp, so the same sources always give the same bytes.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import zipfile
from importlib.util import find_spec
from pathlib import Path

ROOT = Path(__file__).resolve().parent
ADDON_DIR = ROOT / "blender_addon"
BACKEND_DIR = ROOT / "backend"
MANIFEST = ADDON_DIR / "blender_manifest.toml"
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
SKIPPED_DIRS = {"__pycache__", ".pytest_cache", ".ruff_cache"}
SKIPPED_SUFFIXES = {".pyc", ".pyo", ".orig", ".rej", ".swp"}


class BuildError(Exception):
    pass


def manifest_field(name: str) -> str:
    match = re.search(rf'^{name}\s*=\s*"([^"]*)"', MANIFEST.read_text(encoding="utf-8"), re.MULTILINE)
    if match is None:
        raise BuildError(f"{MANIFEST.name} has no {name}")
    return match.group(1)


def check_versions(version: str) -> None:
    """The zip carries both halves, so the add-on and backend versions must agree."""
    backend = re.search(r'^__version__\s*=\s*"([^"]+)"', (BACKEND_DIR / "__init__.py").read_text(encoding="utf-8"), re.MULTILINE)
    bl_info = re.search(r'"version":\s*\((\d+),\s*(\d+),\s*(\d+)\)', (ADDON_DIR / "__init__.py").read_text(encoding="utf-8"))
    found = {
        "blender_manifest.toml": version,
        "backend/__init__.py": backend.group(1) if backend else "missing",
        "bl_info": ".".join(bl_info.groups()) if bl_info else "missing",
    }
    if len(set(found.values())) != 1:
        raise BuildError("versions disagree: " + ", ".join(f"{k} {v}" for k, v in found.items()))


def package_files() -> list[tuple[str, Path]]:
    """(name inside the add-on folder, source file), sorted."""
    files = []
    for base, prefix in ((ADDON_DIR, ""), (BACKEND_DIR, "backend/")):
        for path in base.rglob("*"):
            relative = path.relative_to(base)
            if path.is_dir() or SKIPPED_DIRS.intersection(relative.parts) or path.suffix in SKIPPED_SUFFIXES:
                continue
            if prefix == "" and relative.parts[0] == "backend":
                raise BuildError("blender_addon/backend exists; the backend is bundled from the top-level package only")
            files.append((prefix + relative.as_posix(), path))
    return sorted(files)


def write_zip(target: Path, top: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".zip.part")
    with zipfile.ZipFile(partial, "w") as archive:
        for name, path in package_files():
            info = zipfile.ZipInfo(f"{top}/{name}", date_time=ZIP_DATE)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes(), compresslevel=9)
    partial.replace(target)


def find_validator(args: argparse.Namespace) -> list[str]:
    """The command that validates a package: Blender's own extension checker."""
    if args.validator:
        return [sys.executable, str(args.validator), "validate"]
    if args.blender:
        return [str(args.blender), "--factory-startup", "--command", "extension", "validate"]
    spec = find_spec("bpy")
    if spec is not None and spec.origin:
        found = sorted(Path(spec.origin).parent.glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
        if found:
            return [sys.executable, str(found[-1]), "validate"]
    blender = shutil.which("blender")
    if blender:
        return [blender, "--factory-startup", "--command", "extension", "validate"]
    raise BuildError("no Blender extension validator found: install the bpy wheel (Python 3.11: pip install bpy==5.0.1), "
                     "or pass --blender or --validator, or skip the check with --no-validate")


def validate(command: list[str], target: Path) -> None:
    result = subprocess.run([*command, str(target)], check=False, capture_output=True, text=True)
    if result.returncode != 0 or "error" in result.stdout.lower():
        raise BuildError(f"Blender's validator rejected {target.name}:\n{result.stdout}{result.stderr}")


def build(output_dir: Path, validator: list[str] | None) -> Path:
    addon_id, version = manifest_field("id"), manifest_field("version")
    check_versions(version)
    target = output_dir / f"{addon_id}-{version}.zip"
    write_zip(target, addon_id)
    if validator is not None:
        validate(validator, target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python build.py",
        description="Build dist/<id>-<version>.zip: the Blender add-on with the backend package bundled inside, "
                    "reproducible (sorted entries, fixed timestamps) and checked with Blender's extension validator.",
    )
    parser.add_argument("--output-dir", type=Path, default=ROOT / "dist", metavar="DIR", help="where to write the zip (default: dist)")
    parser.add_argument("--blender", type=Path, metavar="EXE",
                        help="validate with this Blender executable (blender --command extension validate)")
    parser.add_argument("--validator", type=Path, metavar="BLENDER_EXT_PY",
                        help="validate with this copy of Blender's blender_ext.py; by default the one in the bpy wheel is "
                             "used, else a blender on PATH")
    parser.add_argument("--no-validate", action="store_true", help="skip Blender's validator")
    args = parser.parse_args(argv)
    try:
        target = build(args.output_dir, None if args.no_validate else find_validator(args))
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
