"""App. C: hidden-neuron permutations leave the DNG-Encoder's output unchanged and permute hidden memories.

Each test permutes a trained network the way its symmetry allows (the permuted network computes the same
function, which we check first), converts both networks, and compares (1) the embeddings, to 1e-5 in
fp32, and (2) the memories of the permuted hidden nodes, which must be the original ones permuted:
``s'_i = s_{perm[i]}`` when new neuron ``i`` is old neuron ``perm[i]``.
"""
from __future__ import annotations

import copy

import pytest
import torch

import dng_tgn
from dng_tgn.nets import NFNSiren, SimpleViT, ZooCNN
from dng_tgn.nn import ConcatReadout, DNGEncoder, ExecutionPath

D, F, TOL = 32, 16, 1e-5
PATHS = [ExecutionPath.TORCH] + ([ExecutionPath.DGL] if dng_tgn.nn.paths.dgl_supports("cpu") else [])


def _group(stream, name):
    g = next(g for g in stream.node_groups if g.name == name)
    return slice(g.offset, g.offset + g.size)


def _permuted(model, edits):
    """A copy of ``model`` whose parameters are reindexed: ``edits`` = [(name, dim, index), ...]."""
    new = copy.deepcopy(model)
    sd = new.state_dict()
    for name, dim, index in edits:
        sd[name] = sd[name].index_select(dim, index)
    new.load_state_dict(sd)
    return new


def _encode_both(enc, model, perm_model):
    a = enc([dng_tgn.to_event_stream(model)])
    b = enc([dng_tgn.to_event_stream(perm_model)])
    return a, b


def _check(enc, model, perm_model, hidden: dict[str, torch.Tensor]):
    a, b = _encode_both(enc, model, perm_model)
    assert (a.embedding - b.embedding).abs().max() <= TOL
    stream = dng_tgn.to_event_stream(model)
    for name, perm in hidden.items():
        sl = _group(stream, name)
        orig, new = a.node_memory[sl], b.node_memory[sl]
        assert (new - orig[perm]).abs().max() <= TOL, f"memories of '{name}' do not permute with the neurons"
        assert not torch.allclose(orig, orig[perm]), f"'{name}': the permutation is trivial for this network"


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.value)
def test_mlp_hidden_permutation(path):
    torch.manual_seed(0)
    model = NFNSiren(hidden=16)
    p0, p1 = torch.randperm(16), torch.randperm(16)
    perm = _permuted(model, [
        ("net.0.linear.weight", 0, p0), ("net.0.linear.bias", 0, p0), ("net.1.linear.weight", 1, p0),
        ("net.1.linear.weight", 0, p1), ("net.1.linear.bias", 0, p1), ("net.2.weight", 1, p1),
    ])
    x = torch.rand(64, 2)
    torch.testing.assert_close(model(x), perm(x))  # a true symmetry of the network
    enc = DNGEncoder(D, fourier_size=F, max_timestamps=3, path=path, device="cpu")
    _check(enc, model, perm, {"net.0.linear": p0, "net.1.linear": p1})


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.value)
def test_cnn_hidden_permutation(path):
    torch.manual_seed(0)
    model = ZooCNN(channels=6)
    perms = [torch.randperm(6) for _ in range(3)]
    edits = []
    for i, p in enumerate(perms):  # out channels of conv i, in channels of the layer after it
        edits += [(f"convs.{i}.weight", 0, p), (f"convs.{i}.bias", 0, p)]
        edits.append((f"convs.{i + 1}.weight", 1, p) if i < 2 else ("head.weight", 1, p))
    perm = _permuted(model, edits)
    x = torch.randn(4, 1, 16, 16)
    torch.testing.assert_close(model(x), perm(x))
    enc = DNGEncoder(D, message_heads=9, head_dim=8, fourier_size=F, max_timestamps=4, readout=ConcatReadout(10), path=path, device="cpu")
    _check(enc, model, perm, {f"convs.{i}": p for i, p in enumerate(perms)})


def _vit_block_permutation(heads: int, dh: int, mlp: int, block: int, g: torch.Generator):
    """Heads, within-head Q/K dims (jointly), within-head V dims (with to_out) and MLP hidden units."""
    head_perm = torch.randperm(heads, generator=g)
    qk = [torch.randperm(dh, generator=g) for _ in range(heads)]
    v = [torch.randperm(dh, generator=g) for _ in range(heads)]
    rows = []  # to_qkv rows are [q heads | k heads | v heads], dh rows per head
    for r in range(3):
        for h in range(heads):
            within = v[h] if r == 2 else qk[h]
            rows.append((r * heads + head_perm[h]) * dh + within)
    cols = torch.cat([head_perm[h] * dh + v[h] for h in range(heads)])
    hid = torch.randperm(mlp, generator=g)
    pre = f"transformer.layers.{block}"
    edits = [
        (f"{pre}.0.to_qkv.weight", 0, torch.cat(rows)), (f"{pre}.0.to_out.weight", 1, cols),
        (f"{pre}.1.net.1.weight", 0, hid), (f"{pre}.1.net.1.bias", 0, hid), (f"{pre}.1.net.3.weight", 1, hid),
    ]
    # node groups qk{h}/v{h}/z{h}: new head h holds old head head_perm[h], its dims reordered
    groups = {f"{pre}.mlp_hidden": hid}
    return edits, groups, head_perm, qk, v


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.value)
def test_vit_hidden_permutation(path):
    torch.manual_seed(0)
    heads, dh, mlp = 2, 4, 16
    model = SimpleViT(dim=8, heads=heads, dim_head=dh, mlp_dim=mlp)
    g = torch.Generator().manual_seed(1)
    edits, groups = [], {}
    head_perms = []
    for block in range(2):
        e, grp, head_perm, qk, v = _vit_block_permutation(heads, dh, mlp, block, g)
        edits += e
        groups.update(grp)
        head_perms.append((block, head_perm, qk, v))
    perm = _permuted(model, edits)
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(model(x), perm(x), atol=1e-5, rtol=1e-5)

    enc = DNGEncoder(D, fourier_size=F, max_timestamps=12, path=path, device="cpu")
    _check(enc, model, perm, groups)
    # score nodes s_e (Q/K), value and output nodes v_d, z_d: new (head h, dim i) is old (head head_perm[h], dim within[i])
    a, b = _encode_both(enc, model, perm)
    stream = dng_tgn.to_event_stream(model)
    for block, head_perm, qk, v in head_perms:
        for role, within in (("qk", qk), ("v", v), ("z", v)):
            for h in range(heads):
                new = b.node_memory[_group(stream, f"transformer.layers.{block}.{role}{h}")]
                old = a.node_memory[_group(stream, f"transformer.layers.{block}.{role}{int(head_perm[h])}")]
                assert (new - old[within[h]]).abs().max() <= TOL


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.value)
def test_vit_control_the_same_permutation_without_to_out(path):
    """Control beside the ViT test: V rows and heads permuted as there, but to_out's columns left alone.

    More pairs of symmetry and control (K without Q, one dimension across heads, ...) are in test_vit_attention.py.
    """
    torch.manual_seed(0)
    heads, dh, mlp = 2, 4, 16
    model = SimpleViT(dim=8, heads=heads, dim_head=dh, mlp_dim=mlp)
    g = torch.Generator().manual_seed(1)
    edits = []
    for block in range(2):
        edits += [e for e in _vit_block_permutation(heads, dh, mlp, block, g)[0] if not e[0].endswith("to_out.weight")]
    broken = _permuted(model, edits)
    x = torch.randn(3, 1, 28, 28)
    assert (model(x) - broken(x)).abs().max() > 1e-3  # not a symmetry
    enc = DNGEncoder(D, fourier_size=F, max_timestamps=12, path=path, device="cpu")
    a, b = _encode_both(enc, model, broken)
    assert (a.embedding - b.embedding).norm() / a.embedding.norm() >= 1e-2


def test_a_non_symmetry_changes_the_embedding():
    """Control: permuting a layer's rows without its consumer's columns is a different network."""
    torch.manual_seed(0)
    model = NFNSiren(hidden=16)
    p0 = torch.randperm(16)
    broken = _permuted(model, [("net.0.linear.weight", 0, p0), ("net.0.linear.bias", 0, p0)])
    enc = DNGEncoder(D, fourier_size=F, max_timestamps=3, device="cpu")
    a, b = _encode_both(enc, model, broken)
    assert (a.embedding - b.embedding).abs().max() > 1e-3
