"""What the sidebar and the preferences say about the backend, a job and a result. No bpy."""

from __future__ import annotations

from typing import Any

from .session import HistoryEntry, JobState


def progress_text(job: JobState) -> str:
    if job.cancel_requested:
        return "Cancelling..."
    if job.id is None:
        return "Sending..."
    if not job.stage:
        return f"Queued ({job.position} ahead)" if job.position else "Starting..."
    name = job.stage.replace("_", " ").capitalize()
    return f"{name} {job.step}/{job.total}" if job.total else name


def result_summary(entry: HistoryEntry) -> str:
    seconds = entry.result.get("timings", {}).get("total", 0.0)
    text = f"{entry.object_name}: {entry.mesh.vertex_count:,} vertices, {entry.mesh.face_count:,} faces in {seconds:.1f} s"
    if entry.file_loaded:
        text += "; it started before the file was loaded and was added to this one"
    return text


def device_summary(status_or_welcome: dict[str, Any]) -> list[str]:
    """Lines for "Test connection": server version, then each device with precision and free memory."""
    lines = []
    server = status_or_welcome.get("server")
    if server:
        lines.append(f"{server.get('name', 'backend')} {server.get('version', '?')} (pid {server.get('pid', '?')})")
    memory = status_or_welcome.get("memory") or {}
    for device in status_or_welcome.get("devices", []):
        parts = [device.get("name") or device.get("kind", "?"), device.get("kind", "")]
        precision = device.get("compute_dtype") or memory.get("compute_dtype") or memory.get("precision")
        if precision:
            parts.append(f"computes in {precision}")
        if device.get("free_bytes"):
            parts.append(f"{device['free_bytes'] / 2**30:.1f} GiB free")
        lines.append(", ".join(p for p in parts if p))
    if memory.get("mode"):
        lines.append(f"memory mode: {memory['mode']}")
    return lines


def plan_summary(plan: dict[str, Any]) -> str:
    """The backend's plan in one line: "stage mode, ~3.1 GB of 7.2 GB free, about 40 s" (on the CPU, of RAM)."""
    accelerator, host = plan.get("accelerator"), plan["host"]
    if accelerator:
        text = f"{plan['mode']} mode, ~{_gb(accelerator['peak_bytes'])} of {_gb(accelerator['free_bytes'])} free"
    else:
        text = f"{plan['mode']}, ~{_gb(host['peak_bytes'])} of {_gb(host['available_bytes'])} RAM"
    expected = plan.get("time")
    return text + (f", about {_duration(expected['seconds'])}" if expected else ", time known after its first run")


def plan_fits(plan: dict[str, Any]) -> bool:
    """Whether the planned peak fits in what is free (accelerator memory, or RAM on the CPU)."""
    accelerator = plan.get("accelerator")
    if accelerator:
        return accelerator["peak_bytes"] <= accelerator["free_bytes"]
    return plan["host"]["peak_bytes"] <= plan["host"]["available_bytes"] + plan["host"].get("rss_bytes", 0)


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n < 10e9 else f"{n / 1e9:.0f} GB"


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"
