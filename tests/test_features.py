"""Random Fourier Features (paper F.1.2): configurable size and scale, fixed by a seed, masked slots."""
import math

import torch

import dng_tgn
from dng_tgn.graph.features import RandomFourierFeatures, initial_features
from dng_tgn.nets import NFNSiren, ZooCNN


def test_rff_definition():
    rff = RandomFourierFeatures(fourier_size=128, scale=3.0, seed=0)
    x = torch.tensor([0.0, 0.25, -1.5])
    f = rff(x)
    assert f.shape == (3, 256)
    z = 2 * math.pi * x[:, None] * rff.freqs
    torch.testing.assert_close(f, torch.cat([z.sin(), z.cos()], -1))
    # a zero weight (a padded slot, §4.2) maps to sin=0, cos=1
    assert torch.equal(f[0], torch.cat([torch.zeros(128), torch.ones(128)]))
    assert abs(rff.freqs.std().item() - 3.0) < 0.6  # frequencies drawn with the configured scale


def test_rff_is_reproducible_and_configurable():
    a, b = RandomFourierFeatures(16, 1.0, seed=3), RandomFourierFeatures(16, 1.0, seed=3)
    assert torch.equal(a.freqs, b.freqs) and a.out_dim == 32
    assert not torch.equal(a.freqs, RandomFourierFeatures(16, 1.0, seed=4).freqs)


def test_initial_features_of_a_batch():
    batch = dng_tgn.batch_state_dicts([NFNSiren().state_dict(), ZooCNN().state_dict()])
    nodes, edges = initial_features(batch, fourier_size=8, scale=3.0)
    assert nodes.shape == (batch.num_nodes, 5 * 16)
    # only the bias slot is present for SIRENs and CNNs; the other slot blocks are zero
    assert not nodes[:, 16:].any()
    inputs = batch.node_kind == 0
    assert not nodes[inputs].any()  # inputs carry no parameters: the encoder fills them with learnable vectors
    assert [e.shape[1:] for e in edges] == [(9, 16)] * len(edges)
