"""Random Fourier Features of weights and biases: the initial edge and node features (paper §4.1, F.1.2).

RFF(x) = [sin(2π x B), cos(2π x B)] with B ~ N(0, scale²) drawn once from a fixed seed and never trained.
``fourier_size`` is the number of frequencies, so features have 2·fourier_size dimensions. The paper's
setting is fourier_size=128, scale=3.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class RandomFourierFeatures(nn.Module):
    def __init__(self, fourier_size: int = 128, scale: float = 3.0, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", torch.randn(fourier_size, generator=g) * scale)
        self.fourier_size, self.scale = fourier_size, scale

    @property
    def out_dim(self) -> int:
        return 2 * self.fourier_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(...,) scalars -> (..., 2·fourier_size) features."""
        z = 2 * math.pi * x.unsqueeze(-1) * self.freqs
        return torch.cat([torch.sin(z), torch.cos(z)], dim=-1)

    def max_abs_freq(self) -> float:
        """max |freqs|, cached: the frequencies are frozen (a buffer that is never trained)."""
        key = (self.freqs, self.freqs._version)  # a moved or reloaded buffer is a new tensor or a new version
        cached = getattr(self, "_max_abs_freq", None)
        if cached is None or cached[0][0] is not key[0] or cached[0][1] != key[1]:
            cached = (key, float(self.freqs.abs().max()) if self.freqs.numel() else 0.0)
            self._max_abs_freq = cached
        return cached[1]

    def extra_repr(self) -> str:
        return f"fourier_size={self.fourier_size}, scale={self.scale}"


class NodeFeaturizer(nn.Module):
    """(N, slots) node scalars + slot mask -> (N, slots·2F): an RFF block per slot, zero when absent."""

    def __init__(self, rff: RandomFourierFeatures, num_slots: int):
        super().__init__()
        self.rff = rff
        self.num_slots = num_slots

    @property
    def out_dim(self) -> int:
        return self.num_slots * self.rff.out_dim

    def forward(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        feats = self.rff(values) * mask.unsqueeze(-1).to(values.dtype)
        return feats.flatten(-2)


def initial_features(batch, fourier_size: int = 128, scale: float = 3.0, seed: int = 0):
    """RFF node features (N, slots·2F) and per-timestamp edge features (E_t, K, 2F) of a StreamBatch.

    A convenience for inspection and for models other than the DNG-Encoder (which owns its RFF module).
    Input nodes get zeros here: the encoder fills them with learnable vectors.
    """
    rff = RandomFourierFeatures(fourier_size, scale, seed).to(batch.node_values.device)
    nodes = NodeFeaturizer(rff, batch.node_values.shape[1])(batch.node_values, batch.node_slot_mask)
    return nodes, [rff(step.weight) for step in batch.steps]


# ----------------------------------------------------------------------------------------------------------
# A linear map of RFF features, without materialising them
# ----------------------------------------------------------------------------------------------------------
# ``W @ RFF(x)`` is, for every output row, a smooth function of the one scalar x: a sum of 2F sinusoids whose
# frequencies are at most a = 2π·max|freqs|. On the range [lo, hi] of the x actually present, such a function
# is a polynomial to within float precision once the degree passes a·(hi - lo)/2 by a margin: its Chebyshev
# coefficients are bounded by Bessel functions, |c_n| <= 2|J_n(a h)| <= 2 (a h / 2)^n / n!. So
#
#     RFF(x) = T(x) @ C   (to the tolerance below), T(x) = [T_0(u), ..., T_{P-1}(u)], u = (x - mid) / h,
#     W @ RFF(x) = T(x) @ (W @ C^T)^T
#
# with C (P, 2F) the Chebyshev coefficients of every RFF feature on [lo, hi], computed in float64 from the
# frozen frequencies. A per-element (…, 2F) feature tensor and its (…, 2F) x (2F, out) product become a
# (…, P) basis and a (…, P) x (P, out) product. Weight-space data have small weights (SIREN hidden layers lie
# within ±0.02 at init, trained ones within a few tenths), so P is typically 10-60 instead of 2F = 256.
# The function computed is the same: the projection ``W`` is the same parameter, gradients reach it through
# ``W @ C^T``, and the result agrees with the direct computation to float32 rounding (tests/test_encoder_speedups.py).
# Where P would not be smaller than 2F (very wide ranges), or x needs a gradient, the direct path runs.

CHEBYSHEV_TOL = 1e-9  # bound on the neglected coefficients' sum, relative to a unit-amplitude feature
_MIN_SPEEDUP = 0.75  # use the basis only if P <= 0.75 * 2F (below that the saving pays for the setup)


def chebyshev_degree(max_freq: float, half_width: float, tol: float = CHEBYSHEV_TOL) -> int:
    """Smallest P with 2 (z/2)^P / P! <= tol, z = 2π·max_freq·half_width: the basis size for one range."""
    z = 2 * math.pi * max_freq * half_width
    p = 2
    if z <= 0:
        return p
    log_tol = math.log(tol / 2)
    while p * math.log(z / 2) - math.lgamma(p + 1) > log_tol:
        p += 1
    return p


def _chebyshev_coefficients(freqs: torch.Tensor, lo: float, hi: float, degree: int) -> torch.Tensor:
    """(P, 2F) float64: interpolation coefficients of [sin, cos](2π x freqs) at P Chebyshev nodes on [lo, hi]."""
    f64 = freqs.to(torch.float64)
    m = torch.arange(degree, dtype=torch.float64, device=freqs.device)
    theta = math.pi * (m + 0.5) / degree  # Chebyshev nodes of the first kind
    x = (hi + lo) / 2 + (hi - lo) / 2 * torch.cos(theta)
    z = 2 * math.pi * x.unsqueeze(1) * f64
    values = torch.cat([torch.sin(z), torch.cos(z)], dim=1)  # (P nodes, 2F)
    basis = torch.cos(m.unsqueeze(1) * theta.unsqueeze(0))  # (n, node): T_n at each node
    coef = (2.0 / degree) * basis @ values
    coef[0] *= 0.5
    return coef


_TRIG_BASIS_MAX = 1 << 20  # up to this many basis entries, one vectorised float64 cos beats P small ops


def chebyshev_basis(u: torch.Tensor, degree: int) -> torch.Tensor:
    """(...,) points in [-1, 1] -> (..., degree) Chebyshev polynomials T_0..T_{degree-1}.

    Small inputs (a single network): ``T_n(u) = cos(n arccos u)`` in float64, a handful of ops whatever the
    degree. Large ones: the three-term recurrence in the input's dtype, P cheap passes.
    """
    if u.numel() * degree <= _TRIG_BASIS_MAX and u.dtype != torch.float16 and u.dtype != torch.bfloat16:
        theta = torch.arccos(u.to(torch.float64).clamp(-1.0, 1.0))
        n = torch.arange(degree, dtype=torch.float64, device=u.device)
        return torch.cos(theta.unsqueeze(-1) * n).to(u.dtype)
    cols = [torch.ones_like(u), u]
    two_u = 2 * u
    for _ in range(2, degree):
        cols.append(two_u * cols[-1] - cols[-2])
    return torch.stack(cols[:degree], dim=-1)


class RFFBasis:
    """RFF(x) factored as ``basis @ coef`` (``coef`` None: ``basis`` is RFF(x) itself, the direct path).

    ``project(weight, bias)`` is ``RFF(x) @ weight.T + bias`` for any ``weight`` (out, 2F); one basis serves
    several projections of the same scalars (the encoder projects node scalars twice, see memory.py).
    """

    def __init__(self, basis: torch.Tensor, coef: torch.Tensor | None):
        self.basis, self.coef = basis, coef

    @property
    def size(self) -> int:
        return self.basis.shape[-1]

    def fold(self, weight: torch.Tensor) -> torch.Tensor:
        """(out, 2F) -> (out, P): the projection expressed on the basis (identity on the direct path)."""
        if self.coef is None:
            return weight
        with torch.autocast(weight.device.type, enabled=False):  # a small product, kept in full precision
            return weight @ self.coef.to(weight.dtype).T

    def fold_with_bias(self, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """(out, P) with ``basis @ result.T = RFF(x) @ weight.T + bias``; Chebyshev bases only (T_0 = 1 carries the bias)."""
        if self.coef is None:
            raise ValueError("the direct RFF basis has no constant column to carry a bias")
        folded = self.fold(weight)
        return torch.cat([folded[:, :1] + bias.unsqueeze(1).to(folded.dtype), folded[:, 1:]], dim=1)

    def project(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if self.coef is None or bias is None:
            return nn.functional.linear(self.basis, self.fold(weight), bias)
        # a plain product with the bias folded into T_0's column: no broadcast bias copy of the (…, out) result
        return self.basis @ self.fold_with_bias(weight, bias).T


def rff_basis_plan(rff: RandomFourierFeatures, x: torch.Tensor, tol: float = CHEBYSHEV_TOL,
                   value_range: tuple[float, float] | None = None) -> tuple[int, tuple[float, float]] | None:
    """``(P, (lo, hi))``: the Chebyshev basis size and value range :func:`rff_basis` would use for ``x``, without
    the coefficient fit; None where it takes the direct features. Callers that may not want the basis at all
    decide on P first, and pass ``(lo, hi)`` on as ``value_range`` (no second min/max pass)."""
    if x.numel() == 0 or x.requires_grad or not x.is_floating_point():
        return None
    if value_range is None:
        lo, hi = torch.aminmax(x.detach().to(torch.float32))
        lo, hi = float(lo), float(hi)  # one host sync per call; the degree must be known to size the basis
    else:
        lo, hi = float(value_range[0]), float(value_range[1])
        if not lo <= hi:
            raise ValueError(f"value_range must be (lo, hi) with lo <= hi, got {value_range!r}")
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    if x.dtype == torch.float64:
        tol = min(tol, 1e-17)  # double-precision callers get double-precision truncation
    degree = chebyshev_degree(rff.max_abs_freq(), (hi - lo) / 2, tol)
    if degree > _MIN_SPEEDUP * rff.out_dim:
        return None
    return degree, (lo, hi)


def rff_basis(rff: RandomFourierFeatures, x: torch.Tensor, tol: float = CHEBYSHEV_TOL,
              value_range: tuple[float, float] | None = None) -> RFFBasis:
    """The cheapest exact-to-rounding factorisation of ``rff(x)`` for the values in ``x`` (see above).

    ``value_range``: ``(lo, hi)`` of a tensor that ``x`` is a part of (one range for all chunks of it, so that
    each chunk skips the min/max pass and its host sync). It is not checked: that would need the very pass it
    saves, and values outside it would be clamped, so pass only the range of a superset of ``x``.
    """
    plan = rff_basis_plan(rff, x, tol, value_range)
    if plan is None:
        return RFFBasis(rff(x), None)
    degree, (lo, hi) = plan
    if hi == lo:
        u = torch.zeros_like(x)
    else:
        mid, half = (hi + lo) / 2, (hi - lo) / 2
        u = ((x - mid) / half).clamp(-1.0, 1.0)
    coef = _chebyshev_coefficients(rff.freqs, lo, hi if hi > lo else lo + 1e-30, degree)
    return RFFBasis(chebyshev_basis(u, degree), coef)


def rff_linear(rff: RandomFourierFeatures, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
               tol: float = CHEBYSHEV_TOL, value_range: tuple[float, float] | None = None) -> torch.Tensor:
    """``rff(x) @ weight.T + bias`` for (...,) scalars -> (..., out), without the (..., 2F) feature tensor.

    The basis route costs a fold (out x 2F x P) plus a (..., P) x (P, out) product; the direct one a (..., 2F) x
    (2F, out) product. With few scalars (a SIREN's 64 first-layer weights, P ~ 58) the direct one is cheaper
    and skips the coefficient fit, so it runs there: the same function either way (to float rounding).
    """
    n, two_f = x.numel(), rff.out_dim
    if n <= two_f:  # only few scalars can favour the direct product
        plan = rff_basis_plan(rff, x, tol, value_range)
        if plan is None or n * (two_f - plan[0]) <= plan[0] * two_f:
            return nn.functional.linear(rff(x), weight, bias)
        value_range = plan[1]  # passed on: rff_basis skips its own min/max pass
    return rff_basis(rff, x, tol, value_range).project(weight, bias)
