"""Reading pip's output as progress. Stdlib only."""

from __future__ import annotations

import re

from .plan import requirement_name


def parse_pip_line(line: str) -> tuple[str, float] | None:
    """A pip output line -> (what to show, how far into the step that is), or None for noise."""
    text = line.strip()
    if text.startswith("Collecting "):
        return f"collecting {requirement_name(text[len('Collecting '):])}", 0.1
    if text.startswith("Downloading "):
        match = re.match(r"Downloading (\S+?)(?:\s+\((.+)\))?$", text)
        if match:
            size = f" ({match.group(2)})" if match.group(2) else ""
            return f"downloading {_distribution(match.group(1))}{size}", 0.2
    if text.startswith("Processing "):
        return f"unpacking {_distribution(text[len('Processing '):].split(' ')[0])}", 0.2
    if text.startswith("Installing collected packages:"):
        names = [n.strip() for n in text.split(":", 1)[1].split(",") if n.strip()]
        return f"installing {len(names)} package{'s' if len(names) != 1 else ''}", 0.6
    if text.startswith("Successfully installed"):
        return "installed", 1.0
    if text.startswith("Requirement already satisfied:"):
        return f"already there: {requirement_name(text.split(':', 1)[1].strip())}", 0.1
    return None


def _distribution(location: str) -> str:
    """``.../torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl`` -> ``torch 2.13.0+cpu``."""
    name = location.rstrip("/").rsplit("/", 1)[-1]
    parts = name.split("-")
    return f"{parts[0]} {parts[1]}" if name.endswith(".whl") and len(parts) >= 5 else name
