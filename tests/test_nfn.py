"""NFN baseline (Zhou et al. 2023): NP / HNP layer equivariance, encoder invariance, and a learning check."""
from __future__ import annotations

import pytest
import torch

from dng_tgn.baselines.nfn import (
    HNPLinear, HNPPool, NFNEncoder, NFNLayout, NPLinear, NPPool, WeightSpace, count_parameters, nfn_parameter_count,
    permute_neurons, select_rows,
)
from dng_tgn.nets import NFNSiren, ZooCNN
from dng_tgn.training import kendall_tau

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOL = 1e-5
BATCH = 50


def stacked(sds):
    return {k: torch.stack([sd[k] for sd in sds]) for k in sds[0]}


def mlp_layout(widths):
    return NFNLayout(tuple(f"l{i}.weight" for i in range(len(widths) - 1)),
                     tuple(f"l{i}.bias" for i in range(len(widths) - 1)),
                     tuple((b, a) for a, b in zip(widths[:-1], widths[1:])))


# layouts for the layer tests: a deep MLP (hidden-hidden layers present), the shallowest HNP case (one hidden
# layer), and convs (3x3 kernels as features) ending in a linear head
LAYOUTS = {
    "mlp4": mlp_layout((3, 5, 6, 4, 2)),
    "mlp2": mlp_layout((3, 5, 2)),
    "cnn": NFNLayout(("c0.weight", "c1.weight", "fc.weight"), ("c0.bias", "c1.bias", "fc.bias"),
                     ((4, 2, 3, 3), (5, 4, 3, 3), (3, 5))),
}


def random_ws(layout, batch=3, channels=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return WeightSpace([torch.randn(batch, channels, *s, generator=g, dtype=torch.float64)
                        for s in layout.weight_shapes],
                       [torch.randn(batch, channels, s[0], generator=g, dtype=torch.float64)
                        for s in layout.weight_shapes])


def perms_for(layout, layers, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {l: torch.randperm(layout.neuron_counts[l], generator=g) for l in layers}


def max_diff(a: WeightSpace, b: WeightSpace) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a.weights + a.biases, b.weights + b.biases))


def make_layer(kind, layout):
    torch.manual_seed(0)
    if kind == "np":
        return NPLinear(layout, 2, 4).double()
    if kind == "np_io":
        return NPLinear(layout, 2, 4, io_embed=True).double()
    return HNPLinear(layout, 2, 4).double()


# ---------------------------------------------------------------------------------------------------------------
# (1) layer equivariance


@pytest.mark.parametrize("name", list(LAYOUTS))
@pytest.mark.parametrize("kind", ["np", "np_io", "hnp"])
def test_layers_are_equivariant_to_hidden_neuron_permutations(kind, name):
    layout = LAYOUTS[name]
    layer, ws = make_layer(kind, layout), random_ws(layout)
    p = perms_for(layout, range(1, layout.num_layers))
    out = layer(ws)
    assert [tuple(w.shape) for w in out.weights] == [(3, 4, *s) for s in layout.weight_shapes]
    assert max_diff(layer(ws.permute(p)), out.permute(p)) < TOL
    # the output really depends on the input (not a constant map)
    assert max_diff(layer(random_ws(layout, seed=5)), out) > 1e-2


@pytest.mark.parametrize("name", list(LAYOUTS))
@pytest.mark.parametrize("kind", ["np_io", "hnp"])
@pytest.mark.parametrize("io", ["input", "output"])
def test_input_and_output_permutations_are_not_symmetries(kind, name, io):
    """Negative control: permuting input (output) neurons is not a symmetry of the networks, so neither
    HNPLinear nor NP-PosEmb (NPLinear with io embeddings) may commute with it."""
    layout = LAYOUTS[name]
    layer, ws = make_layer(kind, layout), random_ws(layout)
    l = 0 if io == "input" else layout.num_layers
    p = {l: torch.roll(torch.arange(layout.neuron_counts[l]), 1)}
    assert max_diff(layer(ws.permute(p)), layer(ws).permute(p)) > 1e-3


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_plain_np_layer_also_commutes_with_input_and_output_permutations(name):
    """The paper's NP group permutes every neuron layer; without io embeddings NPLinear is equivariant to it
    (which is why the encoder's np mode adds them)."""
    layout = LAYOUTS[name]
    layer, ws = make_layer("np", layout), random_ws(layout)
    p = perms_for(layout, range(layout.num_layers + 1))
    assert max_diff(layer(ws.permute(p)), layer(ws).permute(p)) < TOL


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_pools_are_invariant(name):
    layout = LAYOUTS[name]
    ws = random_ws(layout)
    hidden = perms_for(layout, range(1, layout.num_layers))
    every = perms_for(layout, range(layout.num_layers + 1))
    for pool, p in ((NPPool(layout), every), (HNPPool(layout), hidden)):
        out = pool(ws)
        assert out.shape == (3, type(pool).out_features(layout, 2))
        assert (pool(ws.permute(p)) - out).abs().max() < TOL
    # HNP pooling keeps input/output positions
    assert (HNPPool(layout)(ws.permute({0: torch.roll(torch.arange(layout.n_in), 1)})) - HNPPool(layout)(ws)
            ).abs().max() > 1e-3


def test_weight_space_permute_matches_permute_neurons():
    layout = LAYOUTS["cnn"]
    ws = random_ws(layout, channels=1)
    params = layout.to_params(ws)
    p = perms_for(layout, range(layout.num_layers + 1))
    back = layout.to_weight_space(permute_neurons(params, layout, p))
    assert max_diff(back, ws.permute(p).map(lambda t: t.float())) == 0


# ---------------------------------------------------------------------------------------------------------------
# (2) encoder invariance on real layouts


def siren_params(n=4):
    torch.manual_seed(0)
    return stacked([NFNSiren().state_dict() for _ in range(n)])


def zoo_params(n=4):
    torch.manual_seed(0)
    return stacked([ZooCNN().state_dict() for _ in range(n)])


def run_net(net_cls, params, i, x):
    net = net_cls()
    net.load_state_dict({k: v[i] for k, v in params.items()})
    with torch.no_grad():
        return net.eval()(x)


@pytest.mark.parametrize("mode", ["np", "hnp"])
def test_encoder_is_invariant_on_sirens(mode):
    params = siren_params()
    layout = NFNLayout.infer(params)
    assert layout.neuron_counts == (2, 32, 32, 1)
    p = perms_for(layout, (1, 2))
    perm = permute_neurons(params, layout, p)
    x = torch.rand(7, 2) * 2 - 1
    assert torch.allclose(run_net(NFNSiren, params, 1, x), run_net(NFNSiren, perm, 1, x), atol=1e-5)  # a symmetry
    torch.manual_seed(0)
    enc = NFNEncoder(layout, mode, channels=(8, 8), out_dim=16, head_hidden=32).eval()
    enc.set_normalization(params)  # raw SIREN / zoo weights are tiny; standardised inputs, as in training
    y, f = enc(params), enc.features(params)
    assert y.shape == (4, 16)
    assert (enc(perm) - y).abs().max() < TOL and (enc.features(perm) - f).abs().max() < TOL
    # negative controls: swapping the input coordinates, or permuting one layer's rows without the next
    # layer's columns, changes the function and must change the encoding
    swapped = permute_neurons(params, layout, {0: torch.tensor([1, 0])})
    broken = dict(params, **{"net.1.linear.weight": params["net.1.linear.weight"][:, p[2]]})
    for other in (swapped, broken):
        assert (enc(other) - y).abs().max() > 10 * TOL
        assert (enc.features(other) - f).abs().max() > 1e-3


@pytest.mark.parametrize("mode", ["np", "hnp"])
def test_encoder_is_invariant_on_zoo_cnns(mode):
    params = zoo_params()
    layout = NFNLayout.infer(params)
    assert layout.neuron_counts == (1, 16, 16, 16, 10) and layout.filter_sizes == (9, 9, 9, 1)
    p = perms_for(layout, (1, 2, 3))
    perm = permute_neurons(params, layout, p)
    x = torch.randn(2, 1, 12, 12)
    assert torch.allclose(run_net(ZooCNN, params, 2, x), run_net(ZooCNN, perm, 2, x), atol=1e-5)  # a symmetry
    torch.manual_seed(0)
    enc = NFNEncoder(layout, mode, channels=(8, 8), out_dim=16, head_hidden=32).eval()
    enc.set_normalization(params)  # raw SIREN / zoo weights are tiny; standardised inputs, as in training
    y, f = enc(params), enc.features(params)
    assert (enc(perm) - y).abs().max() < TOL and (enc.features(perm) - f).abs().max() < TOL
    # negative controls: flipping conv kernels spatially, or relabelling the classes
    flipped = dict(params, **{"convs.1.weight": params["convs.1.weight"].flip(-1)})
    classes = permute_neurons(params, layout, {4: torch.roll(torch.arange(10), 1)})
    for other in (flipped, classes):
        assert (enc(other) - y).abs().max() > 10 * TOL
        assert (enc.features(other) - f).abs().max() > 1e-3


def test_layout_inference_and_errors():
    params = siren_params(2)
    layout = NFNLayout.infer(params, layers=["net.0.linear", "net.1.linear", "net.2"])
    assert layout == NFNLayout.infer(params) == NFNLayout.from_module(NFNSiren())
    with pytest.raises(ValueError, match="takes"):
        NFNLayout.infer(params, layers=["net.1.linear", "net.0.linear"])
    with pytest.raises(KeyError):
        NFNLayout.infer(params, layers=["net.9"])
    with pytest.raises(ValueError, match="expects"):
        layout.to_weight_space(zoo_params(2) | {k: v[:, :3] for k, v in params.items()})
    with pytest.raises(ValueError, match="HNP"):
        HNPLinear(mlp_layout((3, 2)), 1, 1)
    with pytest.raises(ValueError, match="mode"):
        NFNEncoder(layout, "xyz")


def test_parameter_counts_and_normalization():
    layout = NFNLayout.infer(siren_params(2))
    enc = NFNEncoder(layout, "hnp", channels=(16,) * 3)
    assert count_parameters(enc) == nfn_parameter_count(layout, "hnp", 16)
    assert nfn_parameter_count(layout, "np", 64) > nfn_parameter_count(layout, "np", 16)
    # normalisation: per-layer scalars, so invariance is kept and the stats match the data
    params = siren_params(6)
    enc = NFNEncoder(layout, "np", channels=(4,), head_hidden=8)
    enc.set_normalization(params)
    ws = enc.weight_space(params)
    assert abs(ws.weights[1].mean().item()) < 1e-5 and abs(ws.weights[1].std().item() - 1) < 1e-3
    perm = permute_neurons(params, layout, perms_for(layout, (1, 2)))
    assert (enc(perm) - enc(params)).abs().max() < TOL


# ---------------------------------------------------------------------------------------------------------------
# (3) learning: an invariant function of small MLPs' weights


def tanh_mlps(n, widths=(2, 16, 1), seed=0):
    """Random 2 -> 16 -> 1 tanh MLPs (per-net weight scale) and their mean output on 16 fixed probe inputs.

    The output bias is zero: otherwise that one raw parameter dominates the target, and even a model fitted to
    shuffled targets (any function of the weights leaning on it) ranks held-out nets with |tau| up to ~0.5.
    """
    g = torch.Generator().manual_seed(seed)
    params = {}
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        scale = torch.rand(n, 1, 1, generator=g) * 1.5 + 0.25
        params[f"l{i}.weight"] = torch.randn(n, b, a, generator=g) * scale / a ** 0.5
        params[f"l{i}.bias"] = torch.randn(n, b, generator=g) * 0.5
    params[f"l{len(widths) - 2}.bias"].zero_()
    x = torch.randn(16, widths[0], generator=g).expand(n, -1, -1)
    for i in range(len(widths) - 1):
        x = x @ params[f"l{i}.weight"].transpose(1, 2) + params[f"l{i}.bias"][:, None]
        if i < len(widths) - 2:
            x = torch.tanh(x)
    return params, x.squeeze(-1).mean(1)


def decorrelated_shuffle(y, seed=0, tries=50):
    """A permutation of y with (near) zero correlation to y: a plain shuffle keeps a chance correlation of
    ~1/sqrt(n), which a model that fits the most salient feature can amplify into a held-out |tau| of ~0.2."""
    g = torch.Generator().manual_seed(seed)
    best, best_c = None, float("inf")
    for _ in range(tries):
        q = torch.randperm(len(y), generator=g)
        c = abs(torch.corrcoef(torch.stack([y[q], y]))[0, 1].item())
        if c < best_c:
            best, best_c = q, c
    return y[best]


def fit_and_score(mode, shuffle, n_train=500, n_test=200, epochs=20, lr=1e-2):
    params, y = tanh_mlps(n_train + n_test)
    layout = NFNLayout.infer(params)
    tr, te = torch.arange(n_train), torch.arange(n_train, n_train + n_test)
    y_train = decorrelated_shuffle(y[tr]) if shuffle else y[tr]
    mu, sd = y_train.mean(), y_train.std()
    torch.manual_seed(0)
    enc = NFNEncoder(layout, mode, channels=(16, 16), out_dim=32, head_hidden=64)
    enc.set_normalization(select_rows(params, tr))
    model = torch.nn.Sequential(enc, torch.nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr)
    batch = BATCH
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * ((n_train + batch - 1) // batch))
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for idx in torch.randperm(n_train, generator=g).split(batch):
            loss = ((model(select_rows(params, tr[idx])).squeeze(-1) - (y_train[idx] - mu) / sd) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        pred = model(select_rows(params, te)).squeeze(-1)
    return kendall_tau(pred, y[te])


@pytest.mark.parametrize("mode", ["np", "hnp"])
def test_encoder_learns_an_invariant_function_of_weights(mode):
    assert fit_and_score(mode, shuffle=False) >= 0.7


@pytest.mark.parametrize("mode", ["np", "hnp"])
def test_encoder_does_not_learn_shuffled_targets(mode):
    assert abs(fit_and_score(mode, shuffle=True)) <= 0.3
