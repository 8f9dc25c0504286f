"""ViT attention as a graph (graph/convert/vit.py): the stream is the forward pass, and the DNG embedding sees
how attention is wired.

Each true symmetry of attention sits beside its negative control: the symmetry leaves the model's output and
the embedding unchanged (to 1e-5); the control changes the output and moves the embedding by at least 1e-2
relative to its norm. The perturbations act on every head of every block.
"""
from __future__ import annotations

import copy

import pytest
import torch

import dng_tgn
from dng_tgn.errors import ShapeMismatchError
from dng_tgn.graph import EdgeKind
from dng_tgn.nets import SimpleViT
from dng_tgn.nets.simple_vit import layout_kwargs
from dng_tgn.nn import DNGEncoder, ExecutionPath

H, DH, DIM, MLP, DEPTH = 2, 4, 16, 16, 2
KW = dict(image_size=8, patch_size=4, dim=DIM, depth=DEPTH, heads=H, dim_head=DH, mlp_dim=MLP)
TOL, VISIBLE = 1e-5, 1e-2
PATHS = [ExecutionPath.TORCH] + ([ExecutionPath.DGL] if dng_tgn.nn.paths.dgl_supports("cpu") else [])


# ----- perturbations of one block's state_dict entries (in place) -------------------------------------------------
def _rows(role: str, h: int, within: torch.Tensor) -> torch.Tensor:
    """to_qkv rows of (role, head h) at positions ``within``: the rows are [q heads | k heads | v heads]."""
    return ("qkv".index(role) * H + h) * DH + within


def _derangement(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    while True:
        p = torch.randperm(n, generator=g)
        if not bool((p == torch.arange(n)).any()):
            return p


P = _derangement(DH, 1)  # new dim i of a head takes old dim P[i]
ALL = torch.arange(DH)


def _take_rows(sd, key, new, old):
    w = sd[key].clone()
    w[new] = sd[key][old]
    sd[key] = w


def _take_cols(sd, key, new, old):
    w = sd[key].clone()
    w[:, new] = sd[key][:, old]
    sd[key] = w


def heads_as_blocks(sd, pre):
    order = list(reversed(range(H)))  # new head h is old head order[h]
    new = torch.cat([_rows(r, h, ALL) for r in "qkv" for h in range(H)])
    old = torch.cat([_rows(r, order[h], ALL) for r in "qkv" for h in range(H)])
    _take_rows(sd, f"{pre}.0.to_qkv.weight", new, old)
    _take_cols(sd, f"{pre}.0.to_out.weight", torch.arange(H * DH), torch.cat([order[h] * DH + ALL for h in range(H)]))


def one_dim_across_heads(sd, pre):
    """Dimension 0 of head 0 and dimension 0 of head 1 trade places, in Q, K, V and to_out alike."""
    a, b = torch.tensor([0, DH]), torch.tensor([DH, 0])
    for r in range(3):
        _take_rows(sd, f"{pre}.0.to_qkv.weight", r * H * DH + a, r * H * DH + b)
    _take_cols(sd, f"{pre}.0.to_out.weight", a, b)


def q_and_k_rows(sd, pre):
    for h in range(H):
        for role in "qk":
            _take_rows(sd, f"{pre}.0.to_qkv.weight", _rows(role, h, ALL), _rows(role, h, P))


def k_rows_without_q(sd, pre):
    for h in range(H):
        _take_rows(sd, f"{pre}.0.to_qkv.weight", _rows("k", h, ALL), _rows("k", h, P))


def v_rows_with_to_out_cols(sd, pre):
    for h in range(H):
        _take_rows(sd, f"{pre}.0.to_qkv.weight", _rows("v", h, ALL), _rows("v", h, P))
        _take_cols(sd, f"{pre}.0.to_out.weight", h * DH + ALL, h * DH + P)


def v_rows_without_to_out(sd, pre):
    for h in range(H):
        _take_rows(sd, f"{pre}.0.to_qkv.weight", _rows("v", h, ALL), _rows("v", h, P))


def to_out_cols_without_v(sd, pre):
    for h in range(H):
        _take_cols(sd, f"{pre}.0.to_out.weight", h * DH + ALL, h * DH + P)


Q = _derangement(MLP, 2)


def mlp_hidden_units(sd, pre):
    mlp_rows_without_cols(sd, pre)
    _take_cols(sd, f"{pre}.1.net.3.weight", torch.arange(MLP), Q)


def mlp_rows_without_cols(sd, pre):
    for key in (f"{pre}.1.net.1.weight", f"{pre}.1.net.1.bias"):
        _take_rows(sd, key, torch.arange(MLP), Q)


PAIRS = [  # (a true symmetry, its negative control)
    (heads_as_blocks, one_dim_across_heads),
    (q_and_k_rows, k_rows_without_q),
    (v_rows_with_to_out_cols, v_rows_without_to_out),
    (v_rows_with_to_out_cols, to_out_cols_without_v),
    (mlp_hidden_units, mlp_rows_without_cols),
]


def _edited(model, edit):
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    for block in range(DEPTH):
        edit(sd, f"transformer.layers.{block}")
    new = copy.deepcopy(model)
    new.load_state_dict(sd)
    return new


def _vit(seed=0, **kw):
    torch.manual_seed(seed)
    return SimpleViT(**{**KW, **kw}).eval()


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.value)
@pytest.mark.parametrize("symmetry,control", PAIRS, ids=lambda f: f.__name__)
def test_symmetry_leaves_the_embedding_and_its_control_moves_it(symmetry, control, path):
    model = _vit()
    same, other = _edited(model, symmetry), _edited(model, control)
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        y, y_same, y_other = model(x), same(x), other(x)
    torch.testing.assert_close(y_same, y, atol=TOL, rtol=TOL)  # a symmetry of the network ...
    assert (y_other - y).abs().max() > 1e-3  # ... and a different network
    torch.manual_seed(0)
    enc = DNGEncoder(32, fourier_size=16, max_timestamps=12, path=path, device="cpu")
    with torch.no_grad():
        e, e_same, e_other = (enc([dng_tgn.to_event_stream(m)]).embedding for m in (model, same, other))
    assert (e_same - e).abs().max() <= TOL
    assert (e_other - e).norm() / e.norm() >= VISIBLE


@pytest.mark.parametrize("newer_layout", [True, False], ids=["current", "older"])
@pytest.mark.parametrize("heads,dim_head,depth,channels", [(1, 8, 1, 1), (2, 4, 2, 1), (4, 4, 3, 3)])
def test_replay_is_the_forward_pass(newer_layout, heads, dim_head, depth, channels):
    model = _vit(seed=heads + depth, heads=heads, dim_head=dim_head, depth=depth, channels=channels,
                 final_norm_in_transformer=newer_layout)
    with torch.no_grad():  # move LayerNorms away from the identity so that every parameter matters
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    x = torch.randn(3, channels, 8, 8)
    with torch.no_grad():
        expected = model(x)
    for stream in (dng_tgn.to_event_stream(model), dng_tgn.to_event_stream(model.state_dict(), heads=heads)):
        assert stream.num_timestamps == 2 + 5 * depth
        torch.testing.assert_close(dng_tgn.replay(stream, x), expected, atol=1e-5, rtol=1e-5)
        recovered = stream.recover_parameters()
        assert set(recovered) == set(model.state_dict())


def test_one_timestamp_per_forward_step_and_the_wiring():
    s = dng_tgn.to_event_stream(_vit())
    assert s.num_timestamps == 12  # embedding 1 + 2 blocks x (3 attention + 2 MLP) + head 1
    pre = "transformer.layers.0"
    names = [[s.node_groups[g].name for g in s.updated_groups(t)] for t in (2, 3, 4)]
    assert names[0] == [f"{pre}.{r}{h}" for h in range(H) for r in ("qk", "v")]  # projections
    assert names[1] == [f"{pre}.z{h}" for h in range(H)]  # attention
    assert names[2] == [f"{pre}.attn_out"]  # output projection + residual
    groups = {e.name: e for e in s.edge_groups}
    q, k = groups[f"{pre}.0.to_qkv[q0]"], groups[f"{pre}.0.to_qkv[k0]"]
    assert (q.kind, k.kind) == (EdgeKind.ATTN_Q, EdgeKind.ATTN_K) and q.dst == k.dst  # q_e and k_e meet at s_e
    assert q.weight is not None and k.weight is not None
    score, value = groups[f"{pre}.attn[qk0->z0]"], groups[f"{pre}.attn[v0->z0]"]
    assert score.kind == EdgeKind.ATTN_SCORE and score.num_edges == DH * DH and score.weight is None
    assert value.kind == EdgeKind.ATTN_V and value.num_edges == DH and value.weight is None  # v_d -> z_d only
    src, dst = s.edge_index(s.edge_groups.index(value))
    assert torch.equal(src - s.node_groups[value.src].offset, dst - s.node_groups[value.dst].offset)


def test_the_paper_construction_was_blind_and_this_one_is_not():
    """The issue's headline case: to_out columns shuffled inside a head (output moves, embedding used to move ~1e-7)."""
    model = _vit()
    other = _edited(model, to_out_cols_without_v)
    torch.manual_seed(0)
    enc = DNGEncoder(32, fourier_size=16, max_timestamps=12, device="cpu")
    with torch.no_grad():
        memory = [enc([dng_tgn.to_event_stream(m)]).node_memory for m in (model, other)]
    s = dng_tgn.to_event_stream(model)
    z = next(g for g in s.node_groups if g.name == "transformer.layers.0.z0")
    zs = memory[0][z.offset : z.offset + z.size]
    assert torch.cdist(zs, zs).triu(1).max() > 1e-2  # the Z nodes of a head are no longer identical
    y = next(g for g in s.node_groups if g.name == "transformer.layers.0.attn_out")
    sl = slice(y.offset, y.offset + y.size)
    assert (memory[1][sl] - memory[0][sl]).norm() / memory[0][sl].norm() > VISIBLE


@pytest.mark.parametrize("heads", [3, 5, 7])
def test_heads_that_do_not_divide_the_width_raise(heads):
    sd = _vit().state_dict()  # width 8 = 2 heads x 4
    with pytest.raises(ShapeMismatchError, match=rf"heads={heads} does not divide the attention width 8"):
        dng_tgn.to_event_stream(sd, heads=heads)


@pytest.mark.parametrize("heads", [0, -2, 2.0, True, "2"])
def test_heads_must_be_a_positive_integer(heads):
    with pytest.raises(ValueError, match="heads must be a positive integer"):
        dng_tgn.to_event_stream(_vit().state_dict(), heads=heads)


def test_a_dividing_head_count_is_taken_on_trust():
    """4 heads of 2 and 2 heads of 4 have the same tensors: the weights cannot tell, so the caller (or a zoo's
    meta.json) must give the right count. Both convert; only the right one replays the model."""
    model = _vit()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        expected = model(x)
    right = dng_tgn.replay(dng_tgn.to_event_stream(model.state_dict(), heads=H), x)
    wrong = dng_tgn.replay(dng_tgn.to_event_stream(model.state_dict(), heads=2 * H), x)
    torch.testing.assert_close(right, expected, atol=1e-5, rtol=1e-5)
    assert (wrong - expected).abs().max() > 1e-4


def test_layouts():
    new, old = _vit(), _vit(final_norm_in_transformer=False)
    assert "transformer.norm.weight" in new.state_dict() and "linear_head.weight" in new.state_dict()
    assert "linear_head.0.weight" in old.state_dict() and "transformer.norm.weight" not in old.state_dict()
    assert layout_kwargs(new.state_dict()) == {"final_norm_in_transformer": True}
    assert layout_kwargs(old.state_dict()) == {"final_norm_in_transformer": False}
    with pytest.raises(KeyError, match="layout"):
        layout_kwargs({"transformer.layers.0.0.to_qkv.weight": torch.zeros(3, 1)})
