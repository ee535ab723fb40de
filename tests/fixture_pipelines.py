"""A small pipeline for tests, registered through the same plug-in path real families use.

Load it in a backend process with ``--pipelines-from fixture_pipelines`` (this folder on
PYTHONPATH). It produces a coloured icosphere (decimated to ``max_faces`` as the real models do) through the real job machinery: parameters,
progress per step, cancellation between steps, results, errors.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from backend import pipelines
from backend.errors import BackendError
from backend.images import decode_image, encode_png
from backend.mesh import Mesh, cleanup
from backend.pipelines.base import MAX_FACES, SEED, JobContext, JobRequest, Param, Pipeline, PipelineOutput
from backend.protocol import ErrorCode

CRASH_EXIT_CODE = 70


def _midpoint(vertices: list, cache: dict[tuple[int, int], int], a: int, b: int) -> int:
    """Index of the unit-sphere point halfway between vertices a and b, added once per edge."""
    key = (min(a, b), max(a, b))
    if key not in cache:
        m = vertices[a] + vertices[b]
        vertices.append(m / np.linalg.norm(m))
        cache[key] = len(vertices) - 1
    return cache[key]


def icosphere(subdivisions: int, radius: float) -> tuple[np.ndarray, np.ndarray]:
    t = (1.0 + 5**0.5) / 2.0
    verts = [(-1, t, 0), (1, t, 0), (-1, -t, 0), (1, -t, 0), (0, -1, t), (0, 1, t), (0, -1, -t), (0, 1, -t),
             (t, 0, -1), (t, 0, 1), (-t, 0, -1), (-t, 0, 1)]
    faces = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4), (11, 10, 2), (10, 7, 6),
             (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9), (4, 9, 5), (2, 4, 11), (6, 2, 10),
             (8, 6, 7), (9, 8, 1)]
    v = [np.array(p, dtype=np.float64) / np.linalg.norm(p) for p in verts]
    f = faces
    for _ in range(subdivisions):
        cache: dict[tuple[int, int], int] = {}
        new_faces = []
        for a, b, c in f:
            ab, bc, ca = (_midpoint(v, cache, p, q) for p, q in ((a, b), (b, c), (c, a)))
            new_faces += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
        f = new_faces
    return np.array(v) * radius, np.array(f)


@pipelines.register
class TestShapePipeline(Pipeline):
    name = "test-shape"
    description = "Coloured sphere for tests: walks its steps with a delay, can fail on request"
    stages = ("prepare", "shape")
    inputs = ("image", "text")
    requires_one_of = ("image", "text")
    scales_with = {"shape": "steps"}
    params = (
        Param("steps", int, 5, "steps of the shape stage", minimum=1, maximum=10000, preview=1),
        Param("step_delay", float, 0.01, "seconds per step", minimum=0.0, maximum=10.0),
        Param("subdivisions", int, 2, "icosphere subdivisions", minimum=0, maximum=7, preview=1),
        Param("radius", float, 0.5, "sphere radius", minimum=0.01, maximum=10.0),
        Param("fail_at_step", int, -1, "raise a job error at this step (-1: never)", minimum=-1, advanced=True),
        Param("crash_at_step", int, -1, "end the backend process at this step, as a crash would (-1: never)", minimum=-1,
              advanced=True),
        SEED,
        MAX_FACES,
    )

    def run(self, request: JobRequest, ctx: JobContext) -> PipelineOutput:
        p = request.params
        ctx.progress("prepare", 0, 1)
        images = {}
        if "image" in request.images:
            images["input"] = encode_png(decode_image(request.images["image"]).convert("RGBA"))
        ctx.progress("prepare", 1, 1)
        for step in range(p["steps"]):
            if step == p["fail_at_step"]:
                raise BackendError(ErrorCode.JOB_FAILED, f"failing at step {step} as asked", hint="set fail_at_step to -1")
            if step == p["crash_at_step"]:
                print(f"test-shape: crashing at step {step} as asked", file=sys.stderr, flush=True)
                os._exit(CRASH_EXIT_CODE)
            time.sleep(p["step_delay"])
            ctx.progress("shape", step + 1, p["steps"], message=f"step {step + 1}")
        positions, faces = cleanup.decimate(*icosphere(p["subdivisions"], p["radius"]), p["max_faces"])
        rng = np.random.default_rng(p["seed"])
        base = rng.random(3)
        colors = np.clip(base + 0.3 * positions / p["radius"], 0, 1)
        return PipelineOutput(Mesh(positions, faces, colors), images=images, info={"seed_color": base.tolist()})


@pipelines.register
class TestMemoryPipeline(Pipeline):
    """Runs one tiny float16 component through the memory manager; can fake out-of-memory errors."""

    name = "test-memory"
    description = "One stage through the memory manager, with injectable out-of-memory errors"
    stages = ("compute",)
    inputs = ("text",)
    requires_one_of = ("text",)
    params = (
        Param("fail_times", int, 0, "the stage raises out-of-memory this many times", minimum=0, maximum=5),
        Param("stages", int, 1, "stages to run, each with its own component (registered as the job goes)", minimum=1, maximum=50),
        Param("stage_delay", float, 0.0, "seconds each stage takes", minimum=0.0, maximum=5.0),
    )

    def run(self, request: JobRequest, ctx: JobContext) -> PipelineOutput:
        import torch

        memory = ctx.memory

        def load():
            torch.manual_seed(0)
            return torch.nn.Linear(3, 3).to(torch.float16)

        failures = [request.params["fail_times"]]
        positions = torch.tensor(icosphere(1, 0.5)[0])
        for index in range(request.params["stages"]):
            name = "test.linear" if index == 0 else f"test.linear.{index}"
            memory.register(name, load, precision="float16")

            def compute(modules, name=name, positions=positions):
                if failures[0] > 0:
                    failures[0] -= 1
                    raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
                time.sleep(request.params["stage_delay"])
                points = positions.to(memory.device, memory.compute_dtype(name))
                return (points + 0.01 * modules[name](points)).float().cpu()

            positions = ctx.run_stage("compute", [name], compute)
            ctx.progress("compute", index + 1, request.params["stages"])
        return PipelineOutput(Mesh(positions.numpy(), icosphere(1, 0.5)[1]), info={"dtype": str(memory.compute_dtype("test.linear"))})


@pipelines.register
class TestBuggyPipeline(Pipeline):
    """A plug-in whose validation has a bug: answering its submit raises an unexpected exception."""

    name = "test-buggy"
    description = "Raises an unexpected exception while its request is validated"
    stages = ("never",)
    inputs = ("text",)
    requires_one_of = ("text",)

    def validate(self, request: JobRequest) -> JobRequest:
        return {}["missing"]


@pipelines.register
class TestViewsPipeline(Pipeline):
    """Takes a front picture and optional named side views, as the multiview models do; reports which it received."""

    name = "test-views"
    description = "A front image plus optional left, back and right views; the result's info gives each picture's size"
    stages = ("shape",)
    inputs = ("image", "left", "back", "right")
    requires_one_of = ("image",)
    params = (SEED,)

    def run(self, request: JobRequest, ctx: JobContext) -> PipelineOutput:
        sizes = {name: list(decode_image(data).size) for name, data in request.images.items()}
        ctx.progress("shape", 1, 1)
        return PipelineOutput(Mesh(*icosphere(1, 0.5)), info={"sizes": sizes})
