"""torchvision's ViT-B/16, written here at a small size, converts exactly; the encoder respects its symmetries.

``VisionTransformer`` below has torchvision's module structure and forward (``torchvision/models/vision_transformer.py``:
``conv_proj`` patchify, ``reshape``/``permute`` to tokens, a class token expanded and concatenated in front, learned
positional embeddings, pre-norm ``EncoderBlock``s of LayerNorm, ``nn.MultiheadAttention`` (batch_first) and an MLP with
GELU and dropout, the final LayerNorm, the head reading ``x[:, 0]``), with its shape checks (``torch._assert``). Sizes:
image 32, patch 8, width 32, 2 heads, 2 layers (ViT-B/16 is 224, 16, 768, 12, 12).
"""
from __future__ import annotations

import copy
import time
from collections import OrderedDict
from functools import partial

import pytest
import torch
from torch import nn

import dng_tgn
from dng_tgn import UnsupportedLayerError, UnsupportedOptionError
from dng_tgn.graph.edge_ops import AddPositions, PrependTokens, QueryKeyBias
from dng_tgn.graph.events import EdgeKind, NodeKind
from dng_tgn.nn import ConcatReadout, DNGEncoder, ExecutionPath

TOL = 1e-5
REPLAY = dict(atol=1e-4, rtol=1e-4)


class MLPBlock(nn.Sequential):
    """torchvision's MLPBlock (an ops.misc.MLP): Linear, GELU, Dropout, Linear, Dropout."""

    def __init__(self, in_dim, mlp_dim, dropout):
        super().__init__(nn.Linear(in_dim, mlp_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_dim, in_dim), nn.Dropout(dropout))


class EncoderBlock(nn.Module):
    def __init__(self, num_heads, hidden_dim, mlp_dim, dropout, attention_dropout, norm_layer=partial(nn.LayerNorm, eps=1e-6),
                 batch_first=True, bias=True):
        super().__init__()
        self.num_heads = num_heads
        self.ln_1 = norm_layer(hidden_dim)
        self.self_attention = nn.MultiheadAttention(hidden_dim, num_heads, dropout=attention_dropout, batch_first=batch_first, bias=bias)
        self.dropout = nn.Dropout(dropout)
        self.ln_2 = norm_layer(hidden_dim)
        self.mlp = MLPBlock(hidden_dim, mlp_dim, dropout)

    def forward(self, input: torch.Tensor):
        torch._assert(input.dim() == 3, f"Expected (batch_size, seq_length, hidden_dim) got {input.shape}")
        x = self.ln_1(input)
        if self.self_attention.batch_first:
            x, _ = self.self_attention(query=x, key=x, value=x, need_weights=False)
        else:  # the same block for a sequence-first attention layer
            x = x.transpose(0, 1)
            x, _ = self.self_attention(x, x, x, need_weights=False)
            x = x.transpose(0, 1)
        x = self.dropout(x)
        x = x + input
        y = self.ln_2(x)
        y = self.mlp(y)
        return x + y


class Encoder(nn.Module):
    def __init__(self, seq_length, num_layers, num_heads, hidden_dim, mlp_dim, dropout, attention_dropout, **block):
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, seq_length, hidden_dim).normal_(std=0.02))
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.Sequential(OrderedDict(
            (f"encoder_layer_{i}", EncoderBlock(num_heads, hidden_dim, mlp_dim, dropout, attention_dropout, **block))
            for i in range(num_layers)))
        self.ln = nn.LayerNorm(hidden_dim, eps=1e-6)

    def forward(self, input: torch.Tensor):
        torch._assert(input.dim() == 3, f"Expected (batch_size, seq_length, hidden_dim) got {input.shape}")
        input = input + self.pos_embedding
        return self.ln(self.layers(self.dropout(input)))


class VisionTransformer(nn.Module):
    def __init__(self, image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, dropout=0.1,
                 attention_dropout=0.1, num_classes=10, **block):
        super().__init__()
        self.image_size, self.patch_size, self.hidden_dim = image_size, patch_size, hidden_dim
        self.conv_proj = nn.Conv2d(3, hidden_dim, kernel_size=patch_size, stride=patch_size)
        seq_length = (image_size // patch_size) ** 2 + 1
        self.class_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        self.encoder = Encoder(seq_length, num_layers, num_heads, hidden_dim, mlp_dim, dropout, attention_dropout, **block)
        self.heads = nn.Sequential(OrderedDict(head=nn.Linear(hidden_dim, num_classes)))

    def _process_input(self, x):
        n, c, h, w = x.shape
        p = self.patch_size
        torch._assert(h == self.image_size, f"Wrong image height! Expected {self.image_size} but got {h}!")
        torch._assert(w == self.image_size, f"Wrong image width! Expected {self.image_size} but got {w}!")
        n_h, n_w = h // p, w // p
        x = self.conv_proj(x)
        x = x.reshape(n, self.hidden_dim, n_h * n_w)
        return x.permute(0, 2, 1)

    def forward(self, x):
        x = self._process_input(x)
        n = x.shape[0]
        batch_class_token = self.class_token.expand(n, -1, -1)
        x = torch.cat([batch_class_token, x], dim=1)
        x = self.encoder(x)
        x = x[:, 0]
        return self.heads(x)


def _vit(seed=0, **kw):
    torch.manual_seed(seed)
    model = VisionTransformer(**kw)
    with torch.no_grad():  # torchvision zero-initialises these; random values reach every path of the stream
        model.class_token.normal_()
        model.encoder.pos_embedding.normal_()
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
            if isinstance(m, nn.MultiheadAttention) and m.in_proj_bias is not None:
                m.in_proj_bias.normal_()
                m.out_proj.bias.normal_()
    return model.eval()


# For the encoder tests: 1x1 patches (K = 1). With 8x8 patches every edge of the stream is padded to K = 64 slots and the
# Eq. 5 multi-head message dilutes what single edges carry: at random initialisation a control's change shrinks ~10x per
# timestamp (measured: the head's memory moves 2e-6 for K = 64, 7e-5 for K = 4, 0.9 for K = 1, for the same control).
SMALL = dict(image_size=3, patch_size=1, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=12, num_classes=3)
SMALL_SHAPE = (3, 3, 3)


def _replay_error(model, shape):
    torch.manual_seed(1)
    x = torch.randn(4, *shape)
    stream = dng_tgn.to_event_stream(model, input_shape=shape)
    with torch.no_grad():
        expected = model(x)
    got = dng_tgn.replay(stream, x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, **REPLAY)
    return stream, float((got - expected).abs().max())


# -- exact conversion ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_vit_b16_structure_replays_exactly(batch_first, bias):
    model = _vit(batch_first=batch_first, bias=bias)
    stream, err = _replay_error(model, (3, 32, 32))
    assert err < 1e-5
    # App. E.2's count: patch embedding (with class token and positions) 1, attention 3 + MLP 2 per block, head 1
    assert stream.num_timestamps == 1 + 5 * 2 + 1


def test_vit_b16_stream_holds_every_parameter_once():
    model = _vit()
    stream = dng_tgn.to_event_stream(model, input_shape=(3, 32, 32))
    params = stream.recover_parameters()  # raises if a scalar is encoded twice or missing
    sd = model.state_dict()
    assert set(params) == set(sd)
    for k, v in sd.items():
        torch.testing.assert_close(params[k], v, msg=k)


def test_class_token_and_positions_are_constant_nodes_of_the_first_timestamp():
    model = _vit()
    stream = dng_tgn.to_event_stream(model, input_shape=(3, 32, 32))
    names = {g.name: i for i, g in enumerate(stream.node_groups)}
    cls, pos, unit = names["class_token"], names["encoder.pos_embedding"], names["bias_unit"]
    assert stream.node_groups[cls].size == 1 and stream.node_groups[pos].size == 17 and stream.node_groups[unit].size == 1
    assert {cls, pos, unit} <= stream.presence(0)
    assert all(stream.node_groups[g].kind == NodeKind.INPUT for g in (cls, pos, unit))
    step1 = [stream.edge_groups[e] for e in stream.steps[0]]
    ops = {type(e.op) for e in step1}
    assert PrependTokens in ops and AddPositions in ops  # they join the patch embedding's timestamp
    cls_edges = next(e for e in step1 if isinstance(e.op, PrependTokens))
    torch.testing.assert_close(cls_edges.weight[:, 0, 0], model.class_token.detach()[0, 0])
    # q/k biases: weighted ATTN_Q / ATTN_K edges from the unit node
    qk_bias = [e for e in stream.edge_groups if isinstance(e.op, QueryKeyBias)]
    assert len(qk_bias) == 2 * 2 * 2 and {e.kind for e in qk_bias} == {EdgeKind.ATTN_Q, EdgeKind.ATTN_K}


def test_vit_b16_conversion_size_and_time():
    model = _vit()
    start = time.perf_counter()
    stream = dng_tgn.to_event_stream(model, input_shape=(3, 32, 32))
    elapsed = time.perf_counter() - start
    print(f"ViT-B/16-like (32px, patch 8, width 32, 2 heads, 2 layers): {stream.num_nodes} nodes, {stream.num_edges} edges, "
          f"K={stream.num_slots}, L={stream.num_timestamps}, converted in {elapsed:.2f} s")
    assert stream.num_slots == 64  # the 8x8 patch kernel


def test_vit_b16_stream_saves_and_loads(tmp_path):
    from dng_tgn.graph.io import load_stream, save_stream

    model = _vit(**SMALL)
    stream = dng_tgn.to_event_stream(model, input_shape=SMALL_SHAPE)
    save_stream(stream, tmp_path / "vit.pt")
    x = torch.randn(2, *SMALL_SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(dng_tgn.replay(load_stream(tmp_path / "vit.pt"), x), model(x), **REPLAY)


class _PositionsFirst(nn.Module):
    """Positions added to the patch tokens before the class token is put in front (its own position separately is
    not supported; here the class token has none), patch tokens via flatten(2).transpose(1, 2), and no conv bias."""

    def __init__(self, d=8):
        super().__init__()
        self.proj = nn.Conv2d(3, d, 4, stride=4, bias=False)
        self.cls = nn.Parameter(torch.randn(1, 1, d))
        self.pos = nn.Parameter(torch.randn(1, 4, d))
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.head = nn.Linear(d, 2)

    def forward(self, x):
        x = self.proj(x).flatten(2).transpose(1, 2) + self.pos
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        return self.head(self.attn(x, x, x)[0][:, 0])


def test_positions_added_before_the_class_token():
    torch.manual_seed(0)
    _replay_error(_PositionsFirst().eval(), (3, 8, 8))


# -- the encoder respects the ViT's symmetries; each has a control that is not one ----------------------------------------
def _embed(model, shape):
    stream = dng_tgn.to_event_stream(model, input_shape=shape)
    torch.manual_seed(0)
    enc = DNGEncoder(16, message_heads=stream.num_slots, head_dim=4, fourier_size=8, max_timestamps=stream.num_timestamps,
                     readout=ConcatReadout(SMALL["num_classes"]), path=ExecutionPath.TORCH, device="cpu")
    with torch.no_grad():
        return enc([stream]).embedding


def _edited(model, edits):
    new = copy.deepcopy(model)
    sd = new.state_dict()
    for name, dim, index in edits:
        sd[name] = sd[name].index_select(dim, index)
    new.load_state_dict(sd)
    return new


def _symmetry(edits, control):
    model = _vit(**SMALL)
    shape = SMALL_SHAPE
    torch.manual_seed(2)
    x = torch.randn(3, *shape)
    perm, ctrl = _edited(model, edits), _edited(model, control)
    with torch.no_grad():
        torch.testing.assert_close(perm(x), model(x), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(ctrl(x), model(x), atol=1e-4), "the control is a symmetry after all"
    a, b, c = _embed(model, shape), _embed(perm, shape), _embed(ctrl, shape)
    assert (a - b).abs().max() <= TOL
    assert (a - c).abs().max() > 10 * TOL, "the encoder does not see the broken symmetry"


BLOCK = "encoder.layers.encoder_layer_0"
ATTN = f"{BLOCK}.self_attention"
D, HEADS, DH = SMALL["hidden_dim"], SMALL["num_heads"], SMALL["hidden_dim"] // SMALL["num_heads"]


def _qkv_rows(role_perms):
    """Row order of in_proj_weight (3D rows: q heads | k heads | v heads) from {role: (head order, {head: dim perm})}."""
    out = []
    for r, role in enumerate("qkv"):
        heads, dims = role_perms.get(role, (list(range(HEADS)), {}))
        for h in heads:
            out.append(r * D + h * DH + dims.get(h, torch.arange(DH)))
    return torch.cat(out)


def test_mlp_hidden_units():
    h = torch.tensor([3, 0, 1, 2, 5, 4, 7, 6, 9, 8, 11, 10])
    edits = [(f"{BLOCK}.mlp.0.weight", 0, h), (f"{BLOCK}.mlp.0.bias", 0, h), (f"{BLOCK}.mlp.3.weight", 1, h)]
    _symmetry(edits, edits[:2])  # control: rows without the columns that read them


def test_heads_as_blocks():
    rows = _qkv_rows({r: ([1, 0], {}) for r in "qkv"})
    cols = torch.cat([torch.arange(DH, 2 * DH), torch.arange(DH)])
    edits = [(f"{ATTN}.in_proj_weight", 0, rows), (f"{ATTN}.in_proj_bias", 0, rows), (f"{ATTN}.out_proj.weight", 1, cols)]
    only_q = _qkv_rows({"q": ([1, 0], {})})  # control: the query heads swap, their keys and values stay
    _symmetry(edits, [(f"{ATTN}.in_proj_weight", 0, only_q), (f"{ATTN}.in_proj_bias", 0, only_q)])


def test_query_key_dimensions_together():
    p = torch.tensor([2, 0, 3, 1])
    rows = _qkv_rows({"q": ([0, 1], {0: p}), "k": ([0, 1], {0: p})})
    k_only = _qkv_rows({"k": ([0, 1], {0: p})})  # control: K's rows without Q's
    _symmetry([(f"{ATTN}.in_proj_weight", 0, rows), (f"{ATTN}.in_proj_bias", 0, rows)], [(f"{ATTN}.in_proj_weight", 0, k_only)])


def test_value_dimensions_with_out_proj_columns():
    p = torch.tensor([1, 3, 0, 2])
    rows = _qkv_rows({"v": ([0, 1], {1: p})})
    cols = torch.cat([torch.arange(DH), DH + p])
    edits = [(f"{ATTN}.in_proj_weight", 0, rows), (f"{ATTN}.in_proj_bias", 0, rows), (f"{ATTN}.out_proj.weight", 1, cols)]
    _symmetry(edits, edits[:2])  # control: V's rows without out_proj's columns


def _channel_edits(p):
    """One permutation of the residual stream's channels, everywhere it is read or written."""
    edits = [("conv_proj.weight", 0, p), ("conv_proj.bias", 0, p), ("class_token", 2, p), ("encoder.pos_embedding", 2, p),
             ("encoder.ln.weight", 0, p), ("encoder.ln.bias", 0, p), ("heads.head.weight", 1, p)]
    for name in ("ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias", "self_attention.out_proj.weight",
                 "self_attention.out_proj.bias", "mlp.3.weight", "mlp.3.bias"):
        edits.append((f"{BLOCK}.{name}", 0, p))
    edits += [(f"{ATTN}.in_proj_weight", 1, p), (f"{BLOCK}.mlp.0.weight", 1, p)]
    return edits


def test_residual_stream_channels_and_class_token():
    p = torch.tensor([5, 2, 7, 0, 1, 3, 6, 4])
    edits = _channel_edits(p)
    _symmetry(edits, [e for e in edits if e[0] != "class_token"])  # control: the class token keeps its old channels


def test_positional_embedding_is_not_a_symmetry_of_tokens():
    p = torch.tensor([5, 2, 7, 0, 1, 3, 6, 4])
    t = torch.tensor([0, 2, 1, 3, 4, 5, 6, 7, 8, 9])  # control: two patches' positions swapped (the image does not move with them)
    _symmetry(_channel_edits(p), _channel_edits(p) + [("encoder.pos_embedding", 1, t)])


# -- what does not convert is refused by name ------------------------------------------------------------------------------
class _Attn(nn.Module):
    """Patch tokens into one nn.MultiheadAttention, called as ``call(attn, x)``."""

    def __init__(self, call, **mha):
        super().__init__()
        self.proj = nn.Conv2d(3, 4, 4, stride=4)
        self.attn = nn.MultiheadAttention(4, 2, **{"batch_first": True, **mha})
        self.register_buffer("mask", torch.zeros(4, 4, dtype=torch.bool))
        self.head = nn.Linear(4, 2)
        self.call = call

    def forward(self, x):
        x = self.proj(x).flatten(2).transpose(1, 2)
        return self.head(self.call(self, x)[:, 0])


def _first(m, x):
    return m.attn(x, x, x)[0]


@pytest.mark.parametrize("call,mha,error,match", [
    (_first, dict(add_bias_kv=True), UnsupportedOptionError, r"option add_bias_kv=True of MultiheadAttention"),
    (_first, dict(add_zero_attn=True), UnsupportedOptionError, r"option add_zero_attn=True of MultiheadAttention"),
    (_first, dict(kdim=3), UnsupportedOptionError, r"option kdim=3 of MultiheadAttention.*embed_dim"),
    (_first, dict(batch_first=False), UnsupportedLayerError, r"batch_first=False reads \(L, B, E\) tokens but gets batch-first"),
    (lambda m, x: m.attn(x, x, x, attn_mask=m.mask)[0], {}, UnsupportedOptionError, r"option attn_mask=.*supported attn_mask: None"),
    (lambda m, x: m.attn(x, x, x, key_padding_mask=m.mask)[0], {}, UnsupportedOptionError, r"option key_padding_mask="),
    (lambda m, x: m.attn(x, x, x, is_causal=True)[0], {}, UnsupportedOptionError, r"option is_causal=True"),
    (lambda m, x: m.attn(x, x, x)[1], {}, UnsupportedLayerError, r"attention weights \(output 1"),
    (lambda m, x: m.attn(x, x.relu(), x)[0], {}, UnsupportedLayerError, r"only self-attention"),
])
def test_attention_options_that_do_not_convert_are_refused(call, mha, error, match):
    with pytest.raises(error, match=match):
        dng_tgn.to_event_stream(_Attn(call, **mha).eval(), input_shape=(3, 8, 8))


def test_need_weights_true_converts_when_the_weights_are_not_read():
    torch.manual_seed(0)
    _replay_error(_Attn(lambda m, x: m.attn(x, x, x, need_weights=True)[0]).eval(), (3, 8, 8))


class _LatePositions(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj, self.fc = nn.Conv2d(3, 4, 4, stride=4), nn.Linear(4, 4)
        self.pos = nn.Parameter(torch.randn(1, 4, 4))
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        x = self.proj(x).flatten(2).transpose(1, 2)
        return self.head((torch.relu(self.fc(x)) + self.pos)[:, 0])


def test_positions_after_an_activation_are_refused():
    with pytest.raises(UnsupportedLayerError, match="positional embedding converts only on the .* tokens of the patch embedding"):
        dng_tgn.to_event_stream(_LatePositions().eval(), input_shape=(3, 8, 8))


def test_ops_that_do_not_know_tokens_refuse_them():
    class _PoolTokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj, self.head = nn.Conv2d(3, 4, 4, stride=4), nn.Linear(4, 2)

        def forward(self, x):
            return self.head((self.proj(x).flatten(2).transpose(1, 2) * 2.0)[:, 0])

    with pytest.raises(UnsupportedLayerError, match=r"operator.mul \(\*\) .*does not convert on token sequences"):
        dng_tgn.to_event_stream(_PoolTokens().eval(), input_shape=(3, 8, 8))


def test_draw_gives_attention_edges_their_own_colours():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    from dng_tgn.graph.draw import KIND_COLORS, draw_snapshot_colored

    stream = dng_tgn.to_event_stream(_vit(**SMALL), input_shape=SMALL_SHAPE)
    fig, ax = plt.subplots()
    try:
        draw_snapshot_colored(stream, 2, ax=ax)  # t^2: the Q/K/V projections and the q/k biases
        lines = next(c for c in ax.collections if isinstance(c, LineCollection))
        rgb = lines.get_colors()[:, :3]
        for kind in (EdgeKind.ATTN_Q, EdgeKind.ATTN_K):
            assert (torch.tensor(rgb) - torch.tensor(KIND_COLORS[kind])).abs().amax(1).min() < 1e-6, kind.name
        assert not any((abs(c - 0.6) < 1e-6).all() for c in rgb)  # nothing is left grey
        # Q/K edges show |w| as opacity: their alphas differ (a collection-wide alpha would flatten them to one value)
        qk = torch.tensor(rgb) - torch.tensor(KIND_COLORS[EdgeKind.ATTN_Q])
        alphas = torch.tensor(lines.get_colors()[:, 3])[qk.abs().amax(1) < 1e-6]
        assert alphas.numel() > 1 and float(alphas.max() - alphas.min()) > 0.1, alphas
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert any(lbl.startswith("Q") for lbl in labels) and any(lbl.startswith("K") for lbl in labels)
    finally:
        plt.close(fig)
