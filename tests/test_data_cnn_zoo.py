"""CNN zoo: the Small CNN Zoo format (written here as the public archives lay it out) and the vectorised builder."""
import json
import random

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import dng_tgn
from dng_tgn.data import CNNZooDataset, CorruptShardError
from dng_tgn.data import build_cnn_zoo
from dng_tgn.data.cnn_zoo_train import (MultiOptimizer, ZooBatch, forward, init_params, sample_configs,
                                        sort_by_activation)
from dng_tgn.data.sources import load_digits, to_signed
from dng_tgn.nets.zoo_cnn import ZooCNN


pytestmark = pytest.mark.usefixtures("one_torch_thread")


VARS = [("sequential/conv2d/kernel:0", (3, 3, 1, 16)), ("sequential/conv2d/bias:0", (16,)),
        ("sequential/conv2d_1/kernel:0", (3, 3, 16, 16)), ("sequential/conv2d_1/bias:0", (16,)),
        ("sequential/conv2d_2/kernel:0", (3, 3, 16, 16)), ("sequential/conv2d_2/bias:0", (16,)),
        ("sequential/dense/kernel:0", (16, 10)), ("sequential/dense/bias:0", (10,))]


def write_public_zoo(root, n_runs=10, seed=0):
    """A zoo folder as in the CIFAR10-GS archive: rows = (run, epoch) checkpoints in TF layout, final step 86."""
    rng = np.random.default_rng(seed)
    rows, metrics, start, layout = [], [], 0, []
    for name, shape in VARS:
        size = int(np.prod(shape))
        layout.append(dict(varname=name, start_idx=start, end_idx=start + size, size=size, shape=str(shape)))
        start += size
    for run in range(n_runs):
        for step in (0, 20, 86):
            rows.append(rng.normal(size=start).astype(np.float32))
            metrics.append({"config.activation": "relu", "config.w_init": "he_normal", "config.learning_rate": 0.01,
                            "modeldir": f"run{run}", "step": step, "test_accuracy": rng.uniform(0.1, 0.6),
                            "train_accuracy": rng.uniform(0.1, 0.6)})
    rows[3 * 4 + 2][5] = np.nan  # run 4's final checkpoint is not finite
    root.mkdir()
    np.save(root / "weights.npy", np.stack(rows))
    pd.DataFrame(layout).to_csv(root / "layout.csv", index=False)
    pd.DataFrame(metrics).to_csv(root / "metrics.csv.gz", index=False, compression="gzip")
    perm = rng.permutation(len(rows))
    pd.Series(perm).to_csv(root.parent / "zoo_split.csv", header=False, index=False)  # NFN's split file: no header
    return np.stack(rows), pd.DataFrame(metrics), perm


def test_public_zoo_format_nfn_filtering(tmp_path):
    rows, metrics, perm = write_public_zoo(tmp_path / "zoo")
    # NFN's procedure, spelled out independently
    kept = [i for i in perm if metrics.step[i] == 86 and np.isfinite(rows[i]).all()]
    assert len(kept) == 9
    half = int(0.5 * len(kept))
    trainval = list(range(half))
    random.Random(0).shuffle(trainval)
    want = {"test": kept[half:], "train": [kept[i] for i in trainval[:int(0.8 * half)]],
            "val": [kept[i] for i in trainval[int(0.8 * half):]]}
    for split, idx in want.items():
        ds = CNNZooDataset(tmp_path / "zoo", split, split_file=tmp_path / "zoo_split.csv")
        assert len(ds) == len(idx) and ds.dropped_nonfinite == 1
        for j, i in enumerate(idx):
            sd, acc = ds[j]
            assert acc == pytest.approx(metrics.test_accuracy[i])
            assert ds.configs[j]["activation"] == "relu"
            k1 = rows[i][160:160 + 2304].reshape(3, 3, 16, 16)
            np.testing.assert_array_equal(sd["convs.1.weight"].numpy(), k1.transpose(3, 2, 0, 1))
            dense = rows[i][4970 - 170:4970 - 10].reshape(16, 10)
            np.testing.assert_array_equal(sd["head.weight"].numpy(), dense.T)
            np.testing.assert_array_equal(sd["head.bias"].numpy(), rows[i][-10:])
    sd = CNNZooDataset(tmp_path / "zoo", "test")[0][0]
    ZooCNN().load_state_dict(sd)  # exactly ZooCNN's keys and shapes
    assert isinstance(dng_tgn.to_event_stream(sd), dng_tgn.EventStream)


def test_zoo_format_errors(tmp_path):
    write_public_zoo(tmp_path / "zoo")
    layout = pd.read_csv(tmp_path / "zoo" / "layout.csv")
    layout.loc[0, "shape"] = "(3, 3, 1, 15)"
    layout.to_csv(tmp_path / "zoo" / "layout.csv", index=False)
    with pytest.raises(ValueError, match="spans 144 values"):
        CNNZooDataset(tmp_path / "zoo", "train")
    (tmp_path / "zoo" / "metrics.csv.gz").unlink()
    with pytest.raises(FileNotFoundError, match="metrics.csv.gz"):
        CNNZooDataset(tmp_path / "zoo", "train")


def test_vectorised_forward_and_optimizers_match_torch():
    cfgs = sample_configs(6, seed=3)
    cfgs = [cfgs[i] for i in sort_by_activation(cfgs)]
    for c, opt in zip(cfgs, ["adam", "rmsprop", "sgd"] * 2):
        c.update(optimizer=opt, dropout=0.0, l2reg=0.0)
    hp = ZooBatch(cfgs, "cpu")
    params = [p.requires_grad_() for p in init_params(cfgs)]
    x = to_signed(load_digits()[0][:16])
    y = torch.as_tensor(load_digits()[1][:16])
    nets, opts = [], []
    for m, c in enumerate(cfgs):
        net = ZooCNN(activation=nn.ReLU if c["activation"] == "relu" else nn.Tanh)
        net.load_state_dict({k: p[m].detach() for k, p in zip(net.state_dict(), params)})
        lr = c["learning_rate"]
        opts.append({"adam": lambda ps: torch.optim.Adam(ps, lr, eps=1e-7),
                     "rmsprop": lambda ps: torch.optim.RMSprop(ps, lr, alpha=0.9, eps=1e-7),
                     "sgd": lambda ps: torch.optim.SGD(ps, lr)}[c["optimizer"]](net.parameters()))
        nets.append(net)
    multi = MultiOptimizer(params, hp)
    for _ in range(3):
        logits = forward(params, x, hp, train=True)
        ce = nn.functional.cross_entropy(logits.permute(0, 2, 1), y[:, None].expand(-1, 6), reduction="none")
        ce.mean(0).sum().backward()
        multi.step(params)
        for net, opt in zip(nets, opts):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    for m, net in enumerate(nets):
        torch.testing.assert_close(forward(params, x, hp, train=False)[:, m], net(x), atol=2e-5, rtol=1e-4)


TINY = ["--dataset", "digits", "--n-models", "6", "--shard-size", "3", "--steps-per-epoch", "8",
        "--checkpoints", "0,2", "--n-eval", "150", "--device", "cpu"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo") / "zoo"
    build_cnn_zoo.main(TINY + ["--out", str(out)])
    return out


def test_build_tiny_zoo(built):
    w = np.load(built / "weights.npy")
    metrics = pd.read_csv(built / "metrics.csv.gz")
    assert w.shape == (12, 4970) and len(metrics) == 12 and sorted(set(metrics.step)) == [0, 86]
    assert sorted(set(metrics.epoch)) == [0, 2]  # the final checkpoint is labelled 86, its real epoch kept
    for col in ("activation", "w_init", "init_std", "learning_rate", "optimizer", "l2reg", "dropout",
                "train_fraction"):
        assert f"config.{col}" in metrics.columns
    split = pd.read_csv(built / "split.csv", header=None).values.flatten()
    assert sorted(split) == list(range(12))
    start, final = metrics[metrics.step == 0], metrics[metrics.step == 86]
    assert final.train_loss.median() < start.train_loss.median()  # training happened
    assert final.test_accuracy.std() > 0
    # the recorded accuracy is the saved network's real accuracy on the builder's evaluation images
    x, y = load_digits("test")
    idx = json.loads((built / "meta.json").read_text())["eval_test_indices"]
    assert len(set(idx)) == 150
    xt, yt = to_signed(x[idx]), torch.as_tensor(y[idx])
    ds = CNNZooDataset(built, "all")
    assert len(ds) == 6
    for i in range(len(ds)):
        sd, acc = ds[i]
        if not all(torch.isfinite(v).all() for v in sd.values()):
            continue
        net = ZooCNN(activation=nn.ReLU if ds.configs[i]["activation"] == "relu" else nn.Tanh).eval()
        net.load_state_dict(sd)
        with torch.no_grad():
            assert (net(xt).argmax(1) == yt).float().mean().item() == pytest.approx(acc, abs=1e-6)


def test_public_loaders_selecting_step_86_find_every_net(built):
    """NFN's and neural-graphs' Small-CNN-Zoo loaders keep ``step == 86`` rows (the zoo's final epoch)."""
    metrics = pd.read_csv(built / "metrics.csv.gz")
    final = metrics[metrics.step == 86]  # what their loaders select, written out
    assert sorted(final.model_id) == list(range(6))  # every network, once
    assert (final.epoch == 2).all()
    w = np.load(built / "weights.npy")
    assert np.isfinite(w[final.index.to_numpy()]).any(axis=1).all()
    assert len(CNNZooDataset(built, "all", final_step=86)) == len(CNNZooDataset(built, "all"))
    # negative control: the real last epoch is not a step label any more, so selecting it finds nothing
    assert (metrics.step == 2).sum() == 0


def test_final_step_label_must_follow_the_checkpoints(tmp_path):
    with pytest.raises(SystemExit):
        build_cnn_zoo.parse_args(TINY + ["--out", str(tmp_path / "z"), "--checkpoints", "0,90,100"])


def test_zoo_resume_and_corrupt_shard(tmp_path, monkeypatch):
    out = tmp_path / "zoo"
    build_cnn_zoo.main(TINY + ["--out", str(out), "--max-shards", "1"])
    shard0 = out / "_shards" / "shard_00000.npz"
    t0 = shard0.stat().st_mtime_ns
    assert not (out / "weights.npy").exists()
    trained = []
    real = build_cnn_zoo._train_shard

    def counting(args, configs, ids, *a):
        trained.append(ids)
        return real(args, configs, ids, *a)

    monkeypatch.setattr(build_cnn_zoo, "_train_shard", counting)
    build_cnn_zoo.main(TINY + ["--out", str(out)])
    assert trained == [[3, 4, 5]] and shard0.stat().st_mtime_ns == t0
    assert pd.read_csv(out / "metrics.csv.gz").model_id.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    shard0.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CorruptShardError, match="shard_00000.npz"):
        build_cnn_zoo.main(TINY + ["--out", str(out)])
