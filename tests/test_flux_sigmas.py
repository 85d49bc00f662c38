"""The diffusers FluxPipeline sigma list (sharp.schedule.flow_match_euler_sigmas, node SHARPFluxSigmas)
against an independent re-derivation from the formulas of diffusers' FluxPipeline and
FlowMatchEulerDiscreteScheduler.set_timesteps (use_dynamic_shifting, exponential time shift):

    sigmas = linspace(1, 1/N, N);  mu = calculate_shift((H // 16) * (W // 16), 256, 4096, 0.5, 1.15)
    sigmas = e^mu / (e^mu + (1 / sigmas - 1) ** 1.0)   (float64) -> float32, then a final 0
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sharp import schedule

STEPS = (1, 4, 20, 28, 50)


def diffusers_mu(width, height):
    seq_len = (height // 16) * (width // 16)
    m = (1.15 - 0.5) / (4096 - 256)
    return seq_len * m + (0.5 - m * 256)


def diffusers_sigmas(steps, mu):
    t = np.linspace(1.0, 1.0 / steps, steps)
    shifted = math.exp(mu) / (math.exp(mu) + (1.0 / t - 1.0) ** 1.0)
    return np.append(shifted.astype(np.float32), np.float32(0.0))


def ulps(a, b):
    """Distance in float32 units in the last place."""
    return np.abs(a.astype(np.float32).view(np.int32).astype(np.int64) - b.astype(np.float32).view(np.int32))


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("mu", [schedule.FLUX_SHIFT_MU, 0.5, 3.0])
def test_sigmas_equal_diffusers(steps, mu):
    ours = schedule.flow_match_euler_sigmas(steps, mu)
    ref = diffusers_sigmas(steps, mu)
    assert ours.dtype == np.float32 and ours.shape == (steps + 1,)
    assert ours[0] == 1.0 and ours[-1] == 0.0
    assert np.array_equal(ours, ref), (ours, ref, ulps(ours, ref))
    assert np.all(np.diff(ours) < 0)


@pytest.mark.parametrize("size", [(1024, 1024), (2048, 2048), (3756, 2560), (3744, 2560), (1000, 520)])
def test_mu_from_resolution_is_diffusers_calculate_shift(size):
    w, h = size
    assert schedule.diffusers_flux_mu(w, h) == pytest.approx(diffusers_mu(w, h), abs=1e-12)
    assert schedule.diffusers_flux_mu(3756, 2560) == schedule.diffusers_flux_mu(3744, 2560)  # 3756 // 16 = 234


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="steps"):
        schedule.flow_match_euler_sigmas(0)
    with pytest.raises(ValueError, match="mu"):
        schedule.flow_match_euler_sigmas(4, float("nan"))
    with pytest.raises(ValueError, match="16"):
        schedule.diffusers_flux_mu(8, 1024)


@pytest.mark.parametrize("steps", STEPS)
def test_node_outputs_the_diffusers_sigmas(nodes, steps):
    node = nodes["SHARPFluxSigmas"]
    fixed = node.execute(steps=steps, shift="fixed", mu=1.15).result[0]
    assert isinstance(fixed, torch.Tensor) and fixed.dtype == torch.float32
    assert np.array_equal(fixed.numpy(), diffusers_sigmas(steps, 1.15))
    res = node.execute(steps=steps, shift="resolution", mu=99.0, width=3756, height=2560).result[0]
    assert np.array_equal(res.numpy(), diffusers_sigmas(steps, diffusers_mu(3744, 2560)))


def test_node_rejects_unknown_shift(nodes):
    with pytest.raises(ValueError, match="shift"):
        nodes["SHARPFluxSigmas"].execute(steps=4, shift="simple")
