"""UniPC's coefficients (ComfyUI's ``multistep_uni_pc_bh_update``), computed on the host once a run.

Everything here reads host values: the schedule is on the host, and the weights go to the device as
one row of data a step (:mod:`.unipc`). The formulas are ComfyUI's, in float32 as it computes them,
carried to k-diffusion units (``x = x_vp / alpha(sigma)``) and to a fixed three-slot history. ComfyUI
master computes the corrector's right-hand side ``b`` in float64 (its near-cancelling recurrence for the
small steps of high-shift flow schedules): ``b_precision="float64"`` is that formula; which one the running
ComfyUI has is found by a probe (:func:`tpu_runtime.sampling.unipc.formula_for`).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

#: The highest order ComfyUI's ``sample_unipc`` uses (``order = min(3, steps - 1)``): the history's slots.
SLOTS = 3
#: Where ComfyUI's UniPC ends a schedule that ends at 0.
FINAL_SIGMA = 0.001


def end_schedule_as_comfyui(sigmas: torch.Tensor) -> None:
    """A host schedule ending at 0 is changed in place to end at :data:`FINAL_SIGMA`, as ComfyUI's
    ``sample_unipc`` changes it (its ``KSAMPLER`` then reads that last sigma)."""
    if sigmas[-1] == 0:
        sigmas[-1] = FINAL_SIGMA


class StepWeights(NamedTuple):
    """The host weights of the graph that follows one model call: ``correction`` on the slots and the
    new prediction (added to the model's input), then ``predictor`` on the corrected latent and the
    shifted slots (the next model input, or the result after the last call)."""

    correction: tuple[float, float, float, float]
    predictor: tuple[float, float, float, float]

    def row(self) -> list[float]:
        return [*self.correction, *self.predictor]


def _log_mean_coeff(sigma: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.log(1 / ((sigma * sigma) + 1))


def _alpha(sigma: torch.Tensor) -> torch.Tensor:
    return torch.exp(_log_mean_coeff(sigma))


def _std(sigma: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(1. - torch.exp(2. * _log_mean_coeff(sigma)))


def _lambda(sigma: torch.Tensor) -> torch.Tensor:
    log_mean_coeff = _log_mean_coeff(sigma)
    return log_mean_coeff - 0.5 * torch.log(1. - torch.exp(2. * log_mean_coeff))


def step_orders(steps: int) -> list[int]:
    """The order of each update 1..steps, as ComfyUI's multistep loop (``lower_order_final``) chooses it."""
    order = min(SLOTS, steps - 1)
    return [step if step < order else min(order, steps + 1 - step) for step in range(1, steps + 1)]


def _b_values(hh: torch.Tensor, b_h: torch.Tensor, order: int, variant: str, precision: str) -> torch.Tensor:
    """The ``b`` of ComfyUI's bh update: the recurrence ``h_phi_k * k! / B(h)``, in ``precision``, as float32."""
    if precision == "float64":
        hh = hh.double()
        b_h = hh if variant == "bh1" else torch.expm1(hh)
    elif precision != "float32":
        raise ValueError(f"UniPC b precision {precision!r}: float32 or float64")
    h_phi_k = torch.expm1(hh) / hh - 1
    b, factorial = [], 1
    for i in range(1, order + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return torch.stack(b).to(torch.float32)


def _coefficients(timesteps: torch.Tensor, step: int, order: int, variant: str, b_precision: str = "float32"
                  ) -> tuple[float, float, float, list[float], Optional[list[float]], list[float]]:
    """ComfyUI's ``multistep_uni_pc_bh_update`` quantities for the update to ``timesteps[step]``, in float32:
    the latent's factor in k-diffusion units, h*phi_1(h), B(h), the ``rk`` ratios, and the predictor's
    and corrector's ``rhos``."""
    t, t_prev = timesteps[step], timesteps[step - 1]
    lambda_prev, lambda_t = _lambda(t_prev), _lambda(t)
    h = lambda_t - lambda_prev
    rks = [float((_lambda(timesteps[step - 1 - i]) - lambda_prev) / h) for i in range(1, order)]
    hh = -h
    h_phi_1 = torch.expm1(hh)
    if variant == "bh1":
        b_h = hh
    elif variant == "bh2":
        b_h = torch.expm1(hh)
    else:
        raise ValueError(f"UniPC variant {variant!r}: bh1 or bh2")
    all_rks = torch.tensor(rks + [1.], dtype=timesteps.dtype)
    big_r = torch.stack([torch.pow(all_rks, i - 1) for i in range(1, order + 1)])
    b = _b_values(hh, b_h, order, variant, b_precision)
    rhos_p = None if order == 1 else [0.5] if order == 2 else torch.linalg.solve(big_r[:-1, :-1], b[:-1]).tolist()
    rhos_c = [0.5] if order == 1 else torch.linalg.solve(big_r, b).tolist()
    # x_vp = alpha(sigma) * x: the VP update's factor sigma_t / sigma_prev, carried to k-diffusion units.
    x_factor = float(_std(t) / _std(t_prev)) * float(_alpha(t_prev)) / float(_alpha(t))
    return x_factor, float(h_phi_1), float(b_h), rks, rhos_p, rhos_c


def _differences_on_slots(b_h: float, rhos: list[float], rks: list[float]) -> list[float]:
    """``-B(h) sum_i rhos[i] (m_i - m0) / rk_i`` as weights on the three slots, where m0 is the newest
    prediction (slot 2) and m_i the i-th before it (slot 2 - i)."""
    weights = [0.0, 0.0, 0.0]
    for i, rho in enumerate(rhos, start=1):
        weight = -b_h * rho / rks[i - 1]
        weights[2 - i] += weight
        weights[2] -= weight
    return weights


def step_weights(sigmas: torch.Tensor, variant: str = "bh1", b_precision: str = "float32") -> list[StepWeights]:
    """The weights of the graph after each model call 0..steps-1 (``sigmas`` on the host, ending where
    the sampling ends). Slots hold the last three predictions, oldest first; slot 2 is the newest."""
    steps = len(sigmas) - 1
    timesteps = sigmas.detach().to("cpu", torch.float32)
    predictors, corrections = [], [(0.0, 0.0, 0.0, 0.0)]
    for step, order in enumerate(step_orders(steps), start=1):
        x_factor, h_phi_1, b_h, rks, rhos_p, rhos_c = _coefficients(timesteps, step, order, variant, b_precision)
        # Predictor: x_t = x_factor x - h_phi_1 m0 - B(h) sum_i rhos_p[i] (m_i - m0) / rk_i.
        predicted = _differences_on_slots(b_h, rhos_p or [], rks)
        predictors.append((x_factor, predicted[0], predicted[1], predicted[2] - h_phi_1))
        if step < steps:
            # The corrector, minus the predictor (their x and -h_phi_1 m0 terms cancel): its differences,
            # and the new prediction m_t's, -B(h) rhos_c[-1] (m_t - m0).
            corrected = _differences_on_slots(b_h, rhos_c[:-1], rks)
            corrected[2] += b_h * rhos_c[-1]
            corrections.append((corrected[0] - predicted[0], corrected[1] - predicted[1],
                                corrected[2] - predicted[2], -b_h * rhos_c[-1]))
    return [StepWeights(correction, predictor) for correction, predictor in zip(corrections, predictors)]
