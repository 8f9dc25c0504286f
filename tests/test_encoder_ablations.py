"""The DNG-Encoder's ablation options (Tables 4/6 and the authors' code), each against the default model.

For every option: (1) the update/feature it adds is the documented formula (hand-written beside it), (2) it
changes the function (negative control: the default with the shared parameters gives other numbers), (3) the
fast paths (Chebyshev basis, folded node-side gate product, sparse Eq. 4) equal a plain per-step computation,
and (4) hidden-neuron permutation invariance still holds, with a non-symmetry beside it that moves the output.
The DGL/torch equality for the options is in tests/test_encoder_paths.py.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import dng_tgn
from dng_tgn.graph.convert.mlp import LinearLayer, mlp_stream
from dng_tgn.graph.transforms import NONLINEARITIES, RELU, Sine
from dng_tgn.nets import NFNSiren, ZooCNN
from dng_tgn.nn import (
    CellInput, DNGEncoder, ExecutionPath, MemoryUpdater, MessageFunction, UpdateCell, load_encoder, save_encoder,
)
from dng_tgn.nn.paths import step_ops

pytestmark = pytest.mark.usefixtures("one_torch_thread")

D, F = 16, 8
OPTIONS = {  # id -> DNGEncoder kwargs; every option of DNGMemory, alone (the table's rows use them alone too)
    "rnn": dict(cell="rnn"),
    "rnn_relu": dict(cell="rnn_relu"),
    "node_input": dict(gru_input="node"),
    "stacked_2": dict(rnn_layers=2),
    "stacked_2_node_input": dict(rnn_layers=2, gru_input="node"),
    "shared_message": dict(shared_message=True),
    "per_timestamp_update": dict(per_timestamp_update=True),
    "pos_emb": dict(positional_embedding=True),
    "act_emb": dict(activation_embedding=True),
}


def _enc(seed=0, **kw) -> DNGEncoder:
    torch.manual_seed(seed)
    kw.setdefault("max_timestamps", 3)
    return DNGEncoder(D, fourier_size=F, device="cpu", path=ExecutionPath.TORCH, **kw)


def _sirens(n=3, seed=0):
    torch.manual_seed(seed)
    return [dng_tgn.to_event_stream(NFNSiren(hidden=8)) for _ in range(n)]


# ----------------------------------------------------------------------------------------- the update (Eq. 6)
def test_updater_options_are_the_documented_formulas():
    torch.manual_seed(0)
    m, v = torch.randn(5, D), torch.randn(5, D)
    up = MemoryUpdater(D, D, cell="rnn")
    want = up.norm(torch.tanh(m @ up.rnn.weight_ih.T + up.rnn.bias_ih + v @ up.rnn.weight_hh.T + up.rnn.bias_hh))
    torch.testing.assert_close(up(m, v), want)
    up = MemoryUpdater(D, D, cell=UpdateCell.RNN_RELU)
    want = up.norm(torch.relu(m @ up.rnn.weight_ih.T + up.rnn.bias_ih + v @ up.rnn.weight_hh.T + up.rnn.bias_hh))
    torch.testing.assert_close(up(m, v), want)
    # the authors' order: node features are the GRU input, the message its hidden state
    up = MemoryUpdater(D, D, cell_input="node")
    torch.testing.assert_close(up(m, v), up.norm(up.gru(v, m)))
    assert not torch.allclose(up(m, v), up.norm(up.gru(m, v)), atol=1e-3)  # control: the order matters
    # stacked passes: pass 2 has its own cell and norm, reads the same message, and pass 1's output replaces v
    up = MemoryUpdater(D, D, passes=2)
    p2 = up.stacked[0]
    torch.testing.assert_close(up(m, v), p2["norm"](p2["cell"](m, up.norm(up.gru(m, v)))))
    up = MemoryUpdater(D, D, cell_input=CellInput.NODE, passes=2)
    p2 = up.stacked[0]
    torch.testing.assert_close(up(m, v), p2["norm"](p2["cell"](up.norm(up.gru(v, m)), m)))


@pytest.mark.parametrize("cell", list(UpdateCell))
@pytest.mark.parametrize("order", list(CellInput))
@pytest.mark.parametrize("passes", [1, 2])
def test_folded_node_gates_equal_the_cell(cell, order, passes):
    """The fast path's ``from_node_gates`` (node-side product given precomputed) equals ``forward``."""
    torch.manual_seed(1)
    up = MemoryUpdater(D, D, cell=cell, cell_input=order, passes=passes)
    m, v = torch.randn(6, D), torch.randn(6, D)
    w, b = up.node_side()
    torch.testing.assert_close(up.from_node_gates(m, v @ w.T + b, v), up(m, v), atol=1e-6, rtol=1e-5)


def test_default_updater_keeps_its_parameter_names():
    """Saved default encoders keep loading: the default memory's state_dict keys are the GRU-only model's."""
    keys = set(_enc().state_dict())
    assert {"memory.updater.gru.weight_ih", "memory.updater.norm.weight", "memory.messages.2.edge_proj.weight"} <= keys
    assert not any("stacked" in k or "embedding" in k or "updaters" in k for k in keys)


def test_bad_options_are_rejected_with_the_valid_choices():
    with pytest.raises(ValueError, match=r"unknown cell 'lstm'; valid values are 'gru', 'rnn', 'rnn_relu'"):
        _enc(cell="lstm")
    with pytest.raises(ValueError, match=r"unknown gru_input 'edge'.*'message', 'node'"):
        _enc(gru_input="edge")
    with pytest.raises(ValueError, match=r"message_dim \(8\) must equal memory_dim \(16\)"):
        _enc(gru_input="node", message_dim=8)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="rnn_layers"):
            _enc(rnn_layers=bad)
    with pytest.raises(TypeError, match="positional_embedding must be True or False"):
        _enc(positional_embedding="yes")


# ------------------------------------------------------------------------------------- options change the model
def _shared_params(src: nn.Module, dst: nn.Module) -> nn.Module:
    """``dst`` with every parameter it shares (by name and shape) with ``src`` copied from ``src``."""
    dst = copy.deepcopy(dst)
    mine = dst.state_dict()
    mine.update({k: v for k, v in src.state_dict().items() if k in mine and mine[k].shape == v.shape})
    dst.load_state_dict(mine)
    return dst


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_each_option_changes_the_function(name):
    streams = _sirens()
    default = _enc()
    option = _shared_params(default, _enc(seed=1, **OPTIONS[name]))
    a, b = default(streams).node_memory, option(streams).node_memory
    assert (a - b).abs().max() > 1e-2, f"{name} computes the default model"


def test_option_controls_reduce_to_the_default():
    """Positive controls for the additive options: with their extra parameters neutral they are the default."""
    streams = _sirens()
    default = _enc()
    want = default(streams).node_memory
    for kw, neutral in [
        (dict(positional_embedding=True), lambda e: e.memory.layer_embedding.weight.data.zero_()),
        (dict(activation_embedding=True), lambda e: e.memory.nonlinearity_embedding.weight.data.zero_()),
        (dict(per_timestamp_update=True), lambda e: [u.load_state_dict(default.memory.updater.state_dict())
                                                     for u in e.memory.updaters]),
    ]:
        enc = _shared_params(default, _enc(seed=1, **kw))
        neutral(enc)
        torch.testing.assert_close(enc(streams).node_memory, want, atol=1e-6, rtol=1e-6)
    # one phi_m for all timestamps = the default whose per-timestamp phi_m are all copies of the first
    same = copy.deepcopy(default)
    for m in same.memory.messages:
        m.load_state_dict(default.memory.messages[0].state_dict())
    shared = _shared_params(default, _enc(seed=1, shared_message=True))
    assert len(shared.memory.messages) == 1
    torch.testing.assert_close(shared(streams).node_memory, same(streams).node_memory)


def test_activation_embedding_sees_the_non_linearity_and_the_default_does_not():
    torch.manual_seed(0)
    layers = [(torch.randn(8, 2), torch.randn(8)), (torch.randn(8, 8), torch.randn(8)), (torch.randn(1, 8), torch.randn(1))]

    def mlp(act):
        return mlp_stream([LinearLayer(f"w{i}", w, f"b{i}", b, before=(act,) if i else ()) for i, (w, b) in enumerate(layers)])

    sin_net, relu_net = mlp(Sine(30.0)), mlp(RELU)
    batch = dng_tgn.batch_streams([sin_net, relu_net, sin_net])  # same layout: must still be told apart
    hidden = NONLINEARITIES.index
    per_net = [batch.node_nonlinearity[batch.node_graph == i] for i in range(3)]  # nodes are grouped by structure
    assert per_net[0].tolist() == per_net[2].tolist() != per_net[1].tolist()
    assert per_net[0].tolist() == [hidden("identity")] * 2 + [hidden("sin")] * 16 + [hidden("identity")]
    assert per_net[1].tolist() == [hidden("identity")] * 2 + [hidden("relu")] * 16 + [hidden("identity")]
    blind = _enc()(batch).embedding
    torch.testing.assert_close(blind[0], blind[1])  # the default encoder never sees activations
    seeing = _enc(activation_embedding=True)(batch).embedding
    assert (seeing[0] - seeing[1]).abs().max() > 1e-2
    torch.testing.assert_close(seeing[0], seeing[2])


def test_positional_embedding_is_one_vector_per_layer():
    batch = dng_tgn.batch_streams(_sirens(2))
    layer = batch.node_layer().view(2, -1)
    assert layer[0].tolist() == [0] * 2 + [1] * 8 + [2] * 8 + [3]
    enc = _enc(positional_embedding=True)
    base = enc(batch).node_memory.view(2, 19, D)
    enc.memory.layer_embedding.weight.data[2] += 1.0  # move layer 2's vector only
    moved = enc(batch).node_memory.view(2, 19, D)
    torch.testing.assert_close(moved[:, :10], base[:, :10])  # inputs and layer 1 are written before layer 2
    assert (moved[:, 10:] - base[:, 10:]).abs().max() > 1e-2


# ------------------------------------------------------------------------------------- fast paths == plain
def _plain_memory(mem, batch, path):
    """DNGMemory.forward without any fast path: full RFF features, nn modules, per-edge products."""
    nf = mem.node_features
    node_state = nf.proj(nf.featurizer(batch.node_values, batch.node_slot_mask))
    extra = mem.node_embedding(batch)
    if extra is not None:
        node_state = node_state + extra
    bank = mem.initial_memory(batch, node_state)
    for t, step in enumerate(batch.steps, start=1):
        weight = nn.functional.pad(step.weight, (0, mem.message_heads - step.weight.shape[1]))
        feats = mem.edge_features(weight, step.kind, step.span)
        msg = mem.message_at(t)(step_ops(step, path), bank.index_select(0, step.src_nodes), feats)
        bank = bank.index_copy(0, step.dst_nodes, mem.updater_at(t)(msg, node_state.index_select(0, step.dst_nodes)))
    return bank


# Eq. 5 (conv kernels) meets the options only through phi_m sharing and the update's inputs: three cover it
_CNN_CASES = [("cnn", n) for n in ("shared_message", "stacked_2_node_input", "act_emb")]


@pytest.mark.parametrize("net,name", [("siren", n) for n in sorted(OPTIONS)] + _CNN_CASES)
def test_fast_paths_equal_the_plain_computation(net, name, monkeypatch):
    torch.manual_seed(0)
    d = 2 * D  # wider than the node basis (2F = 16 columns), so the node-side gate product is folded
    if net == "siren":  # single edges: Chebyshev basis, folded node gates, sparse Eq. 4
        batch = dng_tgn.batch_state_dicts([NFNSiren(hidden=32).state_dict() for _ in range(2)])
        enc = DNGEncoder(d, fourier_size=F, max_timestamps=3, device="cpu", **OPTIONS[name])
    else:  # conv kernels: Eq. 5 heads
        batch = dng_tgn.batch_streams([dng_tgn.to_event_stream(ZooCNN(channels=4).eval())])
        enc = DNGEncoder(d, fourier_size=F, message_heads=batch.num_slots, head_dim=4, max_timestamps=batch.max_timestamps,
                         device="cpu", **OPTIONS[name])
    routes = []  # the comparison is not vacuous: the fast routes run
    for cls, method in [(MemoryUpdater, "from_node_gates"), (MessageFunction, "message_from_basis")]:
        orig = getattr(cls, method)
        monkeypatch.setattr(cls, method, lambda *a, _o=orig, _m=method, **k: (routes.append(_m), _o(*a, **k))[1])
    probe = torch.randn(batch.num_nodes, d)
    got = enc(batch).node_memory
    assert "from_node_gates" in routes and (net == "cnn" or "message_from_basis" in routes), routes
    monkeypatch.undo()
    (got * probe).sum().backward()
    got_grads = {k: p.grad.clone() for k, p in enc.named_parameters() if p.grad is not None}
    enc.zero_grad(set_to_none=True)
    want = _plain_memory(enc.memory, batch, ExecutionPath.TORCH)
    (want * probe).sum().backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert set(got_grads) == {k for k, p in enc.named_parameters() if p.grad is not None}
    for k, p in enc.named_parameters():
        if p.grad is not None:
            scale = p.grad.abs().max().clamp(min=1e-12)
            assert float((got_grads[k] - p.grad).abs().max() / scale) <= 1e-4, k


# ------------------------------------------------------------------------------------- symmetry (App. C)
def _permuted_sirens():
    torch.manual_seed(0)
    model = NFNSiren(hidden=16)
    p0, p1 = torch.randperm(16), torch.randperm(16)
    sd = model.state_dict()
    sym = dict(sd)
    for name, dim, p in [("net.0.linear.weight", 0, p0), ("net.0.linear.bias", 0, p0), ("net.1.linear.weight", 1, p0),
                         ("net.1.linear.weight", 0, p1), ("net.1.linear.bias", 0, p1), ("net.2.weight", 1, p1)]:
        sym[name] = sym[name].index_select(dim, p)
    broken = dict(sd)  # the rows of layer 1 permuted without the columns of layer 2 that read them: not a symmetry
    broken["net.0.linear.weight"] = sd["net.0.linear.weight"][p0]
    broken["net.0.linear.bias"] = sd["net.0.linear.bias"][p0]
    x = torch.rand(32, 2)
    check = NFNSiren(hidden=16)
    check.load_state_dict(sym)
    torch.testing.assert_close(model(x), check(x))  # a true symmetry of the network
    return dng_tgn.batch_state_dicts([sd, sym, broken])


@pytest.mark.parametrize("name", ["default"] + sorted(OPTIONS))
def test_options_keep_hidden_permutation_invariance(name):
    """Every option embeds per layer / per non-linearity type, never a neuron's index: invariance holds."""
    batch = _permuted_sirens()
    emb = DNGEncoder(32, fourier_size=16, max_timestamps=3, device="cpu", **OPTIONS.get(name, {}))(batch).embedding
    assert (emb[0] - emb[1]).abs().max() <= 1e-5
    assert (emb[0] - emb[2]).abs().max() > 1e-3  # negative control: a non-symmetry moves the embedding


# ------------------------------------------------------------------------------------- saved encoders
def test_saved_encoder_keeps_its_options(tmp_path):
    kw = dict(cell="rnn_relu", gru_input="node", rnn_layers=2, shared_message=True, per_timestamp_update=True,
              positional_embedding=True, activation_embedding=True)
    enc = _enc(**kw)
    save_encoder(enc, tmp_path / "enc.pt")
    saved = torch.load(tmp_path / "enc.pt", weights_only=True)["kwargs"]
    assert {k: saved[k] for k in kw} == kw
    back = load_encoder(tmp_path / "enc.pt")
    streams = _sirens()
    torch.testing.assert_close(back(streams).embedding, enc(streams).embedding)


# ------------------------------------------------------------------------------------- the INR table's rows
def test_the_tables_ablation_rows_build_their_encoders():
    """Each ablation row of experiments/tables.py runs (no `missing`), and its `encoder.dng` update on top of the
    INR experiment's default builds an encoder whose embedding differs from the default's (same seed, same
    streams); the default itself, rebuilt the same way, gives the same embedding (the control)."""
    import experiments.tables as tables
    from sacred.initialize import create_run

    from experiments.inr2jls import ex

    dng = create_run(ex, ex.default_command, config_updates={}, named_configs=("bench",)).config["encoder"]["dng"]
    inr_default = {k: v for k, v in dng.items() if k not in ("memory_dim", "fourier_size", "fourier_scale")}
    assert inr_default["gru_input"] == "node", "the INR default changed: update this test and PREVIOUS_DEFAULTS"
    names = ("pos_emb", "act_emb", "rnn_cell", "gru_message_as_input", "stacked_2", "per_timestamp_phi_u", "shared_phi_m")
    rows = {r.name: r for r in tables.INR_ROWS}
    streams = _sirens()
    with torch.no_grad():
        base = _enc(**inr_default)(streams).embedding
        torch.testing.assert_close(_enc(**inr_default)(streams).embedding, base)
        for name in names:
            row = rows[name]
            assert row.missing is None and row.experiment == "inr2jls"
            out = _enc(**{**inr_default, **row.updates["encoder"]["dng"]})(streams).embedding
            assert (out - base).abs().max() > 1e-3, name
    assert rows["gru_message_as_input"].updates["encoder"]["dng"] == {"gru_input": "message"}
