"""Where the backend keeps its files: results, tokens. Override the root with HY3D_HOME."""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

APP_DIR_NAME = "hunyuan3d-blender"


def data_home() -> Path:
    override = os.environ.get("HY3D_HOME")
    if override:
        return Path(override)
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / APP_DIR_NAME


def default_output_dir() -> Path:
    return data_home() / "outputs"


def private_dir(path: Path) -> Path:
    """Create ``path`` readable by the user alone."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if sys.platform != "win32":
        os.chmod(path, 0o700)
    return path


def write_private(path: Path, text: str) -> None:
    """Create or replace a file only the user can read (the token file)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    if path.exists():
        path.unlink()
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def load_or_create_token(token_file: Path | None) -> tuple[str, Path, bool]:
    """Return (token, its file, whether we created the file and should remove it at exit)."""
    if token_file is not None and token_file.exists():
        token = token_file.read_text(encoding="utf-8").strip()
        if len(token) < 16:
            raise ValueError(f"{token_file}: the token must be at least 16 characters")
        return token, token_file, False
    token = secrets.token_urlsafe(32)
    created = token_file is None
    if token_file is None:
        token_file = private_dir(data_home() / "run") / f"token-{os.getpid()}"
    else:
        token_file.parent.mkdir(parents=True, exist_ok=True)
    write_private(token_file, token + "\n")
    return token, token_file, created
