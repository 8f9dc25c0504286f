"""The trivial baselines: weight statistics (ridge / StatNN trees / logistic) and the flat-weights MLP."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dng_tgn import batch_state_dicts
from dng_tgn.baselines.flat_mlp import flat_parameters
from dng_tgn.baselines.weight_stats import StatsModel, WeightStatsBaseline, weight_statistics
from dng_tgn.nets import NFNSiren, ZooCNN
from dng_tgn.nn.factory import EncoderKind, build_encoder
from dng_tgn.training import kendall_tau


def stacked(sds):
    return {k: torch.stack([sd[k] for sd in sds]) for k in sds[0]}


def test_statistics_are_the_seven_of_each_tensor():
    torch.manual_seed(0)
    sds = [NFNSiren().state_dict() for _ in range(3)]
    x = weight_statistics(stacked(sds))
    assert x.shape == (3, 7 * len(sds[0]))
    w = sds[1]["net.1.linear.weight"].double().numpy().ravel()
    j = 7 * list(sds[0]).index("net.1.linear.weight")
    expected = [w.mean(), w.var(), *np.quantile(w, [0, 0.25, 0.5, 0.75, 1.0])]
    assert np.allclose(x[1, j:j + 7], expected)


def test_statistics_ignore_hidden_neuron_order_and_see_weight_changes():
    torch.manual_seed(0)
    sd = NFNSiren().state_dict()
    perm = torch.randperm(32)
    p = dict(sd)
    p["net.0.linear.weight"], p["net.0.linear.bias"] = sd["net.0.linear.weight"][perm], sd["net.0.linear.bias"][perm]
    p["net.1.linear.weight"] = sd["net.1.linear.weight"][:, perm]
    x = weight_statistics(stacked([sd, p]))
    assert np.allclose(x[0], x[1])
    # negative control: scaling one layer moves its statistics
    q = dict(sd, **{"net.1.linear.weight": sd["net.1.linear.weight"] * 1.5})
    y = weight_statistics(stacked([sd, q]))
    assert np.abs(y[0] - y[1]).max() > 1e-3


def test_nonfinite_weights_are_refused():
    sd = NFNSiren().state_dict()
    bad = dict(sd, **{"net.2.bias": torch.tensor([float("nan")])})
    with pytest.raises(ValueError, match="net.2.bias"):
        weight_statistics(stacked([sd, bad]))


def test_tuned_fit_learns_a_function_of_the_statistics_and_not_noise():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 10))
    y = 1 / (1 + np.exp(-(x[:, 0] - 0.5 * x[:, 3])))
    tr, va, te = slice(0, 200), slice(200, 250), slice(250, 300)
    for model in (StatsModel.RIDGE, StatsModel.GBT):
        m = WeightStatsBaseline.fit_tuned(model, (x[tr], y[tr]), (x[va], y[va]), kendall_tau)
        assert kendall_tau(m.predict(x[te]), y[te]) > 0.7
        # negative control: shuffled training targets carry nothing
        s = WeightStatsBaseline.fit_tuned(model, (x[tr], rng.permutation(y[tr])), (x[va], y[va]), kendall_tau)
        assert abs(kendall_tau(s.predict(x[te]), y[te])) < 0.3
    with pytest.raises(ValueError, match="'ridge', 'gbt', 'logistic'"):
        StatsModel.parse("svm")


def test_tuning_tries_every_configuration_of_the_grid_and_keeps_the_best_on_validation():
    """fit_tuned scores each of the model's TUNING_GRIDS values on validation and keeps the best; the grid really
    reaches the model (control: the trees' learning rates give different validation scores)."""
    from dng_tgn.baselines.weight_stats import TUNING_GRIDS

    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 8))
    y = np.tanh(x[:, 0] * x[:, 1]) + 0.3 * x[:, 2] + 0.1 * rng.normal(size=300)
    train, val = (x[:200], y[:200]), (x[200:], y[200:])
    for model in (StatsModel.RIDGE, StatsModel.GBT):
        m = WeightStatsBaseline.fit_tuned(model, train, val, kendall_tau)
        assert list(m.val_scores) == list(TUNING_GRIDS[model]) and len(m.val_scores) == 3
        assert m.val_score == max(m.val_scores.values()) and m.val_scores[m.hparam] == m.val_score
        refit = WeightStatsBaseline(model, m.hparam).fit(*train)
        assert kendall_tau(refit.predict(val[0]), val[1]) == pytest.approx(m.val_score)
    gbt = WeightStatsBaseline.fit_tuned(StatsModel.GBT, train, val, kendall_tau)
    assert len(set(gbt.val_scores.values())) == 3


def test_flat_parameters_hold_every_weight_once_per_network():
    torch.manual_seed(0)
    sds = [ZooCNN(channels=4).state_dict() for _ in range(3)]
    flat = flat_parameters(batch_state_dicts(sds))
    total = sum(v.numel() for v in sds[0].values())
    assert flat.shape[0] == 3
    # conv kernels are padded to K slots only when kernels differ; here every parameter appears exactly once
    for i, sd in enumerate(sds):
        mine = torch.sort(flat[i][flat[i] != 0]).values
        ref = torch.sort(torch.cat([v.reshape(-1) for v in sd.values()]))
        ref = ref.values[ref.values != 0]
        assert flat.shape[1] >= total and torch.equal(mine, ref)
    assert not torch.equal(flat[0], flat[1])


def test_flat_mlp_encoder_builds_from_a_probe_and_refuses_mixed_architectures():
    torch.manual_seed(0)
    sds = [NFNSiren().state_dict() for _ in range(4)]
    batch = batch_state_dicts(sds)
    enc = build_encoder(EncoderKind.parse("mlp"), num_outputs=1, num_slots=1, dng={}, ng_gnn={},
                        mlp=dict(hidden_dim=16, num_layers=2, out_dim=8), probe=batch)
    assert enc(batch).shape == (4, 8) and enc.out_dim == 8
    with pytest.raises(ValueError, match="one architecture"):
        flat_parameters(batch_state_dicts([sds[0], ZooCNN(channels=4).state_dict()]))
    with pytest.raises(ValueError, match="probe"):
        build_encoder(EncoderKind.MLP, num_outputs=1, num_slots=1, dng={}, ng_gnn={})
