"""Sampling: the two schedules of Hunyuan3D-2 and the Euler loop with guidance.

Time runs from 0 (pure noise) to 1 (data) and the DiT predicts the velocity, so one step is
``x += (sigma_next - sigma) * v``. Two schedules:

- flow matching (the base and ``-fast`` models): ``steps`` times evenly spaced over [0, 1].
  The official pipeline appends 1.0 after a schedule that already ends at 1.0, so its last
  step has zero length: ``steps`` steps are ``steps - 1`` Euler steps. Reproduced, so a given
  step count means what it means upstream (the zero-length step's model call is skipped);
- consistency (the step-distilled ``-turbo`` models): times picked from a coarse grid of
  ``pcm_timesteps`` points, then 1.0; every step counts.

Guidance: the base models run classifier-free guidance (a second pass with all-zero image
tokens, ``v = v_uncond + s * (v_cond - v_uncond)``); guidance-distilled models take the scale
``s`` as an input instead and run once per step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .conditioner import unconditional_tokens
from .config import SchedulerConfig
from .dit import Hunyuan3DDiT


def sigmas(config: SchedulerConfig, steps: int) -> torch.Tensor:
    """The ``steps + 1`` times of the schedule (float64), the last one 1.0."""
    if steps < 1:
        raise ValueError("sampling needs at least one step")
    if config.consistency:
        grid = np.linspace(0, 1, config.num_train_timesteps)
        ratio = config.num_train_timesteps // config.pcm_timesteps
        coarse = np.concatenate([[0], (np.arange(1, config.pcm_timesteps) * ratio).round().astype(np.int64) - 1])
        picked = np.floor(np.linspace(0, config.pcm_timesteps, num=steps, endpoint=False)).astype(np.int64)
        times = grid[coarse][picked]
    else:
        times = np.linspace(0, 1, steps)
        times = config.shift * times / (1 + (config.shift - 1) * times)
        # Upstream keeps this schedule in float32.
        times = times.astype(np.float32).astype(np.float64)
    return torch.cat([torch.from_numpy(np.asarray(times, dtype=np.float64)), torch.ones(1, dtype=torch.float64)])


def model_times(schedule: torch.Tensor, config: SchedulerConfig, dtype: torch.dtype) -> torch.Tensor:
    """The DiT's time input at each step: ``sigma * 1000`` rounded to the compute dtype, then divided by 1000, as upstream."""
    stored = schedule[:-1].float() if not config.consistency else schedule[:-1]
    timesteps = stored * config.num_train_timesteps
    return timesteps.to(dtype) / config.num_train_timesteps


@dataclass
class Guidance:
    """Either classifier-free guidance (a second, unconditional pass) or the scale fed to a distilled model."""

    scale: float
    embedded: bool


def sample(
    model: Hunyuan3DDiT,
    condition: torch.Tensor,
    noise: torch.Tensor,
    config: SchedulerConfig,
    steps: int,
    guidance: Guidance,
    on_step: Callable[[int, int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Run the sampler from ``noise`` [B, L, C] to latents, in ``noise``'s dtype.

    Args:
        model: the DiT, on the device and in the dtype of ``noise``.
        condition: image tokens [B, T, width] in the same dtype.
        config: the schedule.
        steps: model calls (the official step count).
        guidance: the guidance scale and how it is applied.
        on_step: hears (step done, total, latents after it) after every step; may raise to cancel.
    """
    dtype = noise.dtype
    schedule = sigmas(config, steps)
    times = model_times(schedule, config, dtype).to(noise.device)
    batch = noise.shape[0]
    # Classifier-free guidance is on whenever the scale is >= 0, as upstream.
    doubled = not guidance.embedded and guidance.scale >= 0
    if doubled:
        condition = torch.cat([condition, unconditional_tokens(condition)])
    scale = torch.full((batch,), guidance.scale, dtype=dtype, device=noise.device) if guidance.embedded else None
    latents = noise
    for index in range(steps):
        if schedule[index + 1] == schedule[index]:
            # The flow-matching schedule's last step has zero length: upstream still runs the model
            # for it and adds 0 x velocity; skipping the call gives the same latents, a pass sooner.
            if on_step is not None:
                on_step(index + 1, steps, latents)
            continue
        model_input = torch.cat([latents, latents]) if doubled else latents
        velocity = model(model_input, times[index].expand(model_input.shape[0]), condition, scale)
        if doubled:
            conditional, unconditional = velocity.chunk(2)
            velocity = unconditional + guidance.scale * (conditional - unconditional)
        step = (schedule[index + 1] - schedule[index]).float().to(noise.device)
        latents = (latents.float() + step * velocity).to(velocity.dtype)
        if on_step is not None:
            on_step(index + 1, steps, latents)
    return latents


def initial_noise(seed: int, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The starting latents: drawn on the CPU in float32 from ``seed`` (the same on every device), then moved and cast."""
    generator = torch.Generator("cpu").manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)
