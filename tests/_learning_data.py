"""Synthetic weight-space data and a small training loop for tests/test_learning.py.

Two data sets, both generated in memory from a seed (nothing is written to disk):

* ``stripe_sirens``: tiny SIRENs (NFN layout, 2 -> hidden -> 1, sine with w0 = 30) fitted to 8x8 stripe
  images ``amp * sin(pi * freq * u + phase)``. Class 0 has stripes that vary along the row coordinate
  (``u = i``), class 1 is the *same* family transposed (``u = j``). Frequency, phase (a random shift),
  amplitude and the SIREN's initialisation are drawn independently of the class. Transposing an image is
  swapping the two input coordinates, i.e. swapping the two columns of the first weight matrix, and the
  initialisation is symmetric under that swap; so the two classes are exact mirror images of each other in
  weight space, and every statistic that does not look at *which* input a weight reads from (per-layer norms,
  means, stds, the output bias) has the same distribution in both classes: chance accuracy by construction.
* ``probe_mlps``: random tanh MLPs 2 -> 16 -> 16 -> 1 (no output bias) whose target is a function of the
  network's output on a fixed probe set: ``sigmoid(PROBE_GAIN * mean_p f(x_p))``. It is invariant to hidden
  neuron permutations (it only depends on the function), and because the probe set is symmetric
  (``x`` and ``-x``) and weights and biases are symmetric around zero, per-layer norms/means/stds carry
  (almost) nothing about it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

import dng_tgn
from dng_tgn.data.siren_fit import coord_grid
from dng_tgn.nn import ConcatReadout, DNGEncoder, MLPHead

W0 = 30.0
SIREN_KEYS = ("net.0.linear.weight", "net.0.linear.bias", "net.1.weight", "net.1.bias")
PROBE_GAIN = 1.5  # the probe mean of these MLPs has std ~0.66; the gain spreads targets over ~(0.05, 0.95)


@dataclass
class WeightSet:
    state_dicts: list[dict[str, torch.Tensor]]
    params: list[torch.Tensor]  # stacked over networks, one tensor per parameter
    y: torch.Tensor  # class labels (long) or targets in (0, 1) (float)
    convert_kwargs: dict
    max_timestamps: int
    max_inputs: int
    info: dict


# ------------------------------------------------------------------------------------------------ SIRENs
def stripe_images(labels: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """(N, size*size, 1) targets on coord_grid('ij'): row-varying stripes for label 0, their transpose for 1."""
    n = labels.numel()
    freq = 0.5 + torch.rand(n, generator=g)  # half a cycle to 1.5 cycles across the image
    phase = 2 * math.pi * torch.rand(n, generator=g)  # a random shift of the pattern
    amp = 0.5 + 0.4 * torch.rand(n, generator=g)
    coords = coord_grid(size, size)
    u = torch.where(labels[:, None] == 0, coords[None, :, 0], coords[None, :, 1])
    return (amp[:, None] * torch.sin(math.pi * freq[:, None] * u + phase[:, None])).unsqueeze(-1)


def fit_small_sirens(targets: torch.Tensor, coords: torch.Tensor, hidden: int, steps: int, lr: float,
                     g: torch.Generator) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Fit N SIRENs 2 -> hidden -> 1 at once (one Adam over stacked tensors = N independent Adams).

    Sitzmann initialisation as in dng_tgn.data.siren_fit (first layer U(-1/2, 1/2), last layer
    U(-sqrt(6/h)/w0, .), biases U(-1/sqrt(fan_in), .)); w0 stays in the activation.
    """
    n = targets.shape[0]
    w1 = (torch.rand(n, hidden, 2, generator=g) * 2 - 1) / 2
    b1 = (torch.rand(n, hidden, generator=g) * 2 - 1) / math.sqrt(2)
    w2 = (torch.rand(n, 1, hidden, generator=g) * 2 - 1) * math.sqrt(6 / hidden) / W0
    b2 = (torch.rand(n, 1, generator=g) * 2 - 1) / math.sqrt(hidden)
    params = [p.requires_grad_() for p in (w1, b1, w2, b2)]
    opt = torch.optim.Adam(params, lr=lr)
    x = coords.unsqueeze(0).expand(n, -1, -1)

    def per_net_mse():
        h = torch.sin(torch.baddbmm(params[1].unsqueeze(1), x, params[0].transpose(1, 2), beta=W0, alpha=W0))
        out = torch.baddbmm(params[3].unsqueeze(1), h, params[2].transpose(1, 2))
        return (out - targets).pow(2).mean(dim=(1, 2))

    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        per_net_mse().sum().backward()
        opt.step()
    with torch.no_grad():
        mse = per_net_mse()
    return [p.detach() for p in params], mse


def stripe_sirens(n: int, seed: int, size: int = 8, hidden: int = 32, steps: int = 150, lr: float = 1e-2) -> WeightSet:
    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % 2)[torch.randperm(n, generator=g)]
    targets = stripe_images(labels, size, g)
    params, mse = fit_small_sirens(targets, coord_grid(size, size), hidden, steps, lr, g)
    sds = [{k: p[i].clone() for k, p in zip(SIREN_KEYS, params)} for i in range(n)]
    psnr = 10 * torch.log10(4.0 / mse.clamp_min(1e-12))
    return WeightSet(sds, params, labels, {}, max_timestamps=2, max_inputs=2,
                     info={"median_psnr": float(psnr.median()), "mean_mse": float(mse.mean()),
                           "share_below_20db": float((psnr < 20).float().mean())})


# ------------------------------------------------------------------------------------------------ MLPs
def probe_mlp_arch(widths=(2, 16, 16, 1)) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        last = i == len(widths) - 2
        layers.append(nn.Linear(a, b, bias=not last))
        if not last:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def probe_mlps(n: int, seed: int, widths=(2, 16, 16, 1), num_probes: int = 64) -> WeightSet:
    g = torch.Generator().manual_seed(seed)
    depth = len(widths) - 1
    params = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        params.append(torch.randn(n, b, a, generator=g) / math.sqrt(a))
        if i < depth - 1:
            params.append(torch.randn(n, b, generator=g))
    half = torch.rand(num_probes, widths[0], generator=g) * 2 - 1
    probes = torch.cat([half, -half])
    h = probes.unsqueeze(0).expand(n, -1, -1)
    for i in range(depth):
        w = params[2 * i]
        h = h @ w.transpose(1, 2)
        if i < depth - 1:
            h = torch.tanh(h + params[2 * i + 1].unsqueeze(1))
    target = torch.sigmoid(PROBE_GAIN * h.mean(dim=(1, 2)))
    arch = probe_mlp_arch(widths)
    keys = list(arch.state_dict())
    sds = [{k: p[i].clone() for k, p in zip(keys, params)} for i in range(n)]
    return WeightSet(sds, params, target, {"arch": arch}, max_timestamps=depth, max_inputs=widths[0],
                     info={"target_quantiles": np.quantile(target.numpy(), [0.1, 0.5, 0.9]).round(3).tolist()})


# ------------------------------------------------------------------------------------------------ baselines
def per_layer_stats(params: list[torch.Tensor]) -> np.ndarray:
    """Per parameter tensor: L2 norm, mean and std (a single scalar, e.g. the output bias, is itself)."""
    feats = []
    for p in params:
        q = p.reshape(p.shape[0], -1)
        feats += [q[:, 0]] if q.shape[1] == 1 else [q.norm(dim=1), q.mean(dim=1), q.std(dim=1)]
    return torch.stack(feats, dim=1).double().numpy()


def trivial_accuracy(x: np.ndarray, y: np.ndarray, n_train: int) -> dict[str, float]:
    """Held-out accuracy of (1) logistic regression on all statistics, (2) the best single-statistic threshold."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xtr, ytr, xte, yte = x[:n_train], y[:n_train], x[n_train:], y[n_train:]
    logreg = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(xtr, ytr)
    best_train, best_test = -1.0, 0.5
    for f in range(x.shape[1]):
        for thr in np.unique(xtr[:, f]):
            for sign in (1, -1):
                acc = float(((sign * (xtr[:, f] - thr) > 0) == ytr).mean())
                if acc > best_train:
                    best_train = acc
                    best_test = float(((sign * (xte[:, f] - thr) > 0) == yte).mean())
    return {"logreg": float(logreg.score(xte, yte)), "threshold": best_test}


def trivial_tau(x: np.ndarray, y: np.ndarray, n_train: int) -> float:
    """Held-out Kendall tau of a ridge regression on per-layer statistics."""
    from scipy.stats import kendalltau
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), RidgeCV()).fit(x[:n_train], y[:n_train])
    return float(kendalltau(model.predict(x[n_train:]), y[n_train:]).statistic)


# ------------------------------------------------------------------------------------------------ controls
# A plain random permutation of training labels keeps a chance correlation with the true labels (about
# +-1/sqrt(n)); when the true signal is easy to learn, a model trained on it learns a scaled-down copy of the
# real rule, and accuracy or (scale-free) Kendall tau on the held-out set can land far from chance. The
# controls below are permutations too, drawn so that they carry *no* information about the truth.
def uninformative_labels(y: torch.Tensor, seed: int) -> torch.Tensor:
    """A permutation of binary labels ``y`` that agrees with ``y`` on half of the networks (exactly, when
    ``len(y)`` is a multiple of 4): within each true class, the positions that get label 1 are random."""
    g = torch.Generator().manual_seed(seed)
    n, ones = y.numel(), int(y.sum())
    cls0, cls1 = ((y == c).nonzero().squeeze(1) for c in (0, 1))
    k0 = min(max(n // 4, ones - cls1.numel()), cls0.numel(), ones)  # ones given to true class 0
    out = torch.zeros_like(y)
    out[cls0[torch.randperm(cls0.numel(), generator=g)[:k0]]] = 1
    out[cls1[torch.randperm(cls1.numel(), generator=g)[:ones - k0]]] = 1
    return out


def uninformative_targets(y: torch.Tensor, seed: int, max_abs_tau: float = 0.01) -> torch.Tensor:
    """A random permutation of ``y`` whose Kendall tau with ``y`` is at most ``max_abs_tau`` in magnitude."""
    from scipy.stats import kendalltau

    g = torch.Generator().manual_seed(seed)
    for _ in range(1000):
        perm = y[torch.randperm(y.numel(), generator=g)]
        if abs(kendalltau(perm.numpy(), y.numpy()).statistic) <= max_abs_tau:
            return perm
    raise RuntimeError("no permutation with a small enough tau")


# ------------------------------------------------------------------------------------------------ training
def train_dng_predictor(data: WeightSet, n_train: int, train_y: torch.Tensor, *, seed: int, epochs: int,
                        fourier_scale: float, lr: float = 5e-3, batch_size: int = 32, memory_dim: int = 32,
                        fourier_size: int = 16) -> torch.Tensor:
    """DNGEncoder(ConcatReadout(1)) + MLPHead -> one logit per network, trained with BCE-with-logits on
    ``train_y`` (labels or targets in [0, 1]) for the first ``n_train`` networks; returns the held-out logits."""
    torch.manual_seed(seed)
    order = torch.Generator().manual_seed(seed + 1)
    sds = data.state_dicts
    starts = list(range(0, n_train, batch_size))
    batches = [dng_tgn.batch_state_dicts(sds[s:min(s + batch_size, n_train)], **data.convert_kwargs) for s in starts]
    test = dng_tgn.batch_state_dicts(sds[n_train:], **data.convert_kwargs)
    enc = DNGEncoder(memory_dim, readout=ConcatReadout(1), fourier_size=fourier_size, fourier_scale=fourier_scale,
                     max_timestamps=data.max_timestamps, max_inputs=data.max_inputs, device="cpu")
    head = MLPHead(enc.out_dim, 1, hidden_dim=32, num_layers=2)
    opt = torch.optim.Adam([*enc.parameters(), *head.parameters()], lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * len(batches), pct_start=0.2)
    y = train_y.float()
    for _ in range(epochs):
        for b in torch.randperm(len(batches), generator=order).tolist():
            logit = head(enc(batches[b]).embedding).squeeze(1)
            loss = nn.functional.binary_cross_entropy_with_logits(logit, y[starts[b]:starts[b] + logit.shape[0]])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    enc.eval()
    head.eval()
    with torch.no_grad():
        return head(enc(test).embedding).squeeze(1)
