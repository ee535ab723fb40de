"""xatlas in a process of its own.

xatlas holds Python's global interpreter lock for the whole unwrap (seconds to tens of seconds
for a generated mesh), which would stall the server's other threads (status, cancel, new
connections) and leave a cancel waiting. Run in a child process, the unwrap leaves the
interpreter free and can be stopped at once. This module imports only numpy and xatlas, so
the child starts quickly.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from multiprocessing.connection import Connection

import numpy as np

POLL_S = 0.1


def parametrize(positions: np.ndarray, faces: np.ndarray, texture_size: int, padding: int,
                check_cancelled: Callable[[], None] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """xatlas's (source vertex, faces, UVs) for a float32 [N, 3] / uint32 [F, 3] mesh, packed for ``texture_size``.

    ``check_cancelled`` is called every ``POLL_S`` seconds while xatlas runs; whatever it raises
    stops the child and is raised here.
    """
    context = multiprocessing.get_context("spawn")  # no fork of a process with threads and device state
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_run, args=(sender, positions, faces, texture_size, padding), daemon=True,
                            name="xatlas")
    child.start()
    sender.close()
    try:
        while not receiver.poll(POLL_S):
            if not child.is_alive():
                raise RuntimeError(f"the UV unwrap stopped without a result (exit code {child.exitcode})")
            if check_cancelled is not None:
                check_cancelled()
        try:
            outcome, value = receiver.recv()
        except EOFError:
            raise RuntimeError(f"the UV unwrap stopped without a result (exit code {child.exitcode})") from None
    finally:
        if child.is_alive():
            child.terminate()
        child.join()
        receiver.close()
    if outcome == "error":
        raise RuntimeError(f"xatlas failed: {value}")
    return value


def _run(sender: Connection, positions: np.ndarray, faces: np.ndarray, texture_size: int, padding: int) -> None:
    import xatlas

    try:
        atlas = xatlas.Atlas()
        atlas.add_mesh(positions, faces)
        pack = xatlas.PackOptions()
        pack.resolution = texture_size
        pack.padding = padding
        atlas.generate(pack_options=pack)
        sender.send(("ok", atlas[0]))
    except Exception as exc:  # noqa: BLE001 (any failure goes back to the parent as a message)
        sender.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        sender.close()
