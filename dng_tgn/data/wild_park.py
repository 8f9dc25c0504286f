"""The CNN Wild Park (paper §8.2's unseen-architecture task): a zoo of CNNs of many architectures.

Every network is a :class:`ParkCNN`: ``depth`` (2-5) Conv2d layers of their own widths and kernel sizes (3x3 or
5x5, 'same' padding; stride 2 for the first two layers, 1 after), one activation (relu / tanh / gelu / silu),
optionally residual (``y = act(conv(x) + x)`` on every stride-1 layer, whose width then equals its input's), global
average pooling and a Linear head to 10 classes. The DNG-Encoder reads any of them (residual sums become RESIDUAL
edges, kernels of different sizes are zero-padded to the batch's largest, App. E.1).

*Seen* architectures use depths {2, 3, 5} and layer widths {8, 16}; *unseen* ones have depth 4 or at least one
layer of width 12, values no seen architecture has. Networks of seen architectures are split (seeded, per
network) into train / val / test; every network of an unseen architecture is in ``test_unseen``. So the
encoder is trained on seen architectures only, and τ on ``test`` (new nets, seen architectures) and on
``test_unseen`` (architectures never seen) can be compared.

Networks of one architecture train together (``torch.func.vmap`` over stacked parameters, one Adam per network
with its own learning rate); their hyperparameters vary as in the Small CNN Zoo where it matters for the
accuracy spread: learning rate (log-uniform), initialisation seed and scale, and the number of training steps.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "silu": nn.SiLU}
SEEN_DEPTHS, UNSEEN_DEPTHS = (2, 3, 5), (4,)
SEEN_WIDTHS, UNSEEN_WIDTHS = (8, 16), (12,)
KERNELS = (3, 5)
SPLITS = ("train", "val", "test", "test_unseen")


class ParkCNN(nn.Module):
    """A Wild Park CNN; ``arch`` = dict(widths=[...], kernels=[...], residual=bool, activation=str)."""

    def __init__(self, widths, kernels, residual: bool = False, activation: str = "relu", in_channels: int = 1,
                 num_classes: int = 10):
        super().__init__()
        if len(widths) != len(kernels) or not 1 <= len(widths):
            raise ValueError(f"one kernel size per layer: widths {widths}, kernels {kernels}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; valid: {sorted(ACTIVATIONS)}")
        self.strides = [2 if i < 2 else 1 for i in range(len(widths))]
        self.residual = [bool(residual) and s == 1 and c_in == c_out
                         for s, c_in, c_out in zip(self.strides, [in_channels, *widths[:-1]], widths)]
        if residual and not any(self.residual):
            raise ValueError(f"residual=True but no layer of {widths} (strides {self.strides}) keeps its width")
        self.convs = nn.ModuleList(nn.Conv2d(c_in, c, k, stride=s, padding=k // 2) for c_in, c, k, s in
                                   zip([in_channels, *widths[:-1]], widths, kernels, self.strides))
        self.act = ACTIVATIONS[activation]()
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x):
        for conv, res in zip(self.convs, self.residual):
            y = conv(x)
            x = self.act(y + x if res else y)  # the residual joins the conv output before the activation (App. E.1)
        return self.head(x.mean((2, 3)))


def arch_key(arch: dict) -> str:
    return (f"d{len(arch['widths'])}-w{'.'.join(map(str, arch['widths']))}-k{''.join(map(str, arch['kernels']))}"
            f"-{'res' if arch['residual'] else 'plain'}-{arch['activation']}")


def is_unseen(arch: dict) -> bool:
    """Whether an architecture has a depth or a width that no training architecture has."""
    return len(arch["widths"]) in UNSEEN_DEPTHS or any(w in UNSEEN_WIDTHS for w in arch["widths"])


def sample_archs(n: int, seed: int, unseen_fraction: float = 0.25) -> list[dict]:
    """``n`` distinct architectures, about ``unseen_fraction`` of them unseen (depth 4 or a width-12 layer)."""
    rng = np.random.default_rng(seed)
    archs, keys = [], set()
    n_unseen = int(round(unseen_fraction * n))
    tries = 0
    while len(archs) < n:
        tries += 1
        if tries > 100 * n:
            raise ValueError(f"cannot sample {n} distinct architectures")
        unseen = len(archs) < n_unseen
        if unseen and rng.random() < 0.5:
            depth, widths_from = 4, SEEN_WIDTHS + UNSEEN_WIDTHS
        else:
            depth = int(rng.choice(SEEN_DEPTHS))
            widths_from = SEEN_WIDTHS + UNSEEN_WIDTHS if unseen else SEEN_WIDTHS
        widths = [int(rng.choice(widths_from)) for _ in range(depth)]
        residual = bool(depth > 2 and rng.random() < 0.5)
        if residual:  # stride-1 layers keep the width of the layer before them
            widths = widths[:2] + [widths[1]] * (depth - 2)
        arch = dict(widths=widths, kernels=[int(rng.choice(KERNELS)) for _ in range(depth)], residual=residual,
                    activation=str(rng.choice(sorted(ACTIVATIONS))))
        if is_unseen(arch) != unseen or arch_key(arch) in keys:
            continue
        keys.add(arch_key(arch))
        archs.append(arch)
    return archs


def sample_hparams(n: int, seed: int, max_steps: int) -> list[dict]:
    """Per network: learning rate log-uniform [3e-4, 3e-2], init scale log-uniform [0.3, 3] x PyTorch's default,
    a training length uniform in [max_steps / 8, max_steps] steps, and an init seed."""
    rng = np.random.default_rng(seed)
    return [dict(learning_rate=float(np.exp(rng.uniform(np.log(3e-4), np.log(3e-2)))),
                 init_scale=float(np.exp(rng.uniform(np.log(0.3), np.log(3.0)))),
                 steps=int(rng.integers(max(1, max_steps // 8), max_steps + 1)), seed=int(rng.integers(2**31)))
            for _ in range(n)]


def train_arch_group(arch: dict, hparams: list[dict], x_train, y_train, x_test, y_test, batch_size: int = 32,
                     device="cpu", seed: int = 0, progress=None):
    """Train the networks of one architecture together; each stops after its own ``steps``.

    Returns ({name: (M, ...)} parameters at each network's stop, (M,) test accuracies).
    """
    models = []
    for hp in hparams:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hp["seed"])
            m = ParkCNN(**arch)
        with torch.no_grad():
            for name, p in m.named_parameters():
                if name.endswith("weight"):
                    p.mul_(hp["init_scale"])
        models.append(m)
    params, _ = stack_module_state(models)
    params = {k: v.to(device).detach().requires_grad_() for k, v in params.items()}
    base = copy.deepcopy(models[0]).to("meta")
    fn = vmap(lambda p, x: functional_call(base, (p,), (x,)))
    n = len(hparams)
    lr = torch.tensor([h["learning_rate"] for h in hparams], device=device)
    stop = torch.tensor([h["steps"] for h in hparams], device=device)
    m1 = {k: torch.zeros_like(v) for k, v in params.items()}
    m2 = {k: torch.zeros_like(v) for k, v in params.items()}
    g = torch.Generator(device=device).manual_seed(seed)
    x_train, y_train = x_train.to(device), y_train.to(device)
    for t in range(1, int(stop.max()) + 1):
        idx = torch.randint(0, len(x_train), (n, batch_size), generator=g, device=device)
        logits = fn(params, x_train[idx])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y_train[idx].reshape(-1), reduction="none")
        loss = loss.view(n, batch_size).mean(1)
        grads = torch.autograd.grad(torch.where(torch.isfinite(loss), loss, 0.0).sum(), list(params.values()))
        with torch.no_grad():
            active = (t <= stop).float()  # a network past its stop step keeps its parameters
            for (k, p), gr in zip(params.items(), grads):
                gr = torch.nan_to_num(gr, nan=0.0, posinf=0.0, neginf=0.0)
                m1[k].mul_(0.9).add_(gr, alpha=0.1)
                m2[k].mul_(0.999).addcmul_(gr, gr, value=0.001)
                upd = (m1[k] / (1 - 0.9**t)) / ((m2[k] / (1 - 0.999**t)).sqrt() + 1e-8)
                shape = (-1,) + (1,) * (p.dim() - 1)
                p.sub_((lr * active).view(shape) * upd)
        if progress is not None:
            progress.update(n)
    acc = torch.zeros(n, device=device)
    with torch.no_grad():
        for s in range(0, len(x_test), 500):
            xb = x_test[s:s + 500].to(device)
            out = fn(params, xb.unsqueeze(0).expand(n, *xb.shape))
            acc += (out.argmax(-1) == y_test[s:s + 500].to(device)).float().sum(1)
    acc /= len(x_test)
    snap = {k: v.detach().cpu() for k, v in params.items()}
    finite = torch.stack([torch.isfinite(v.flatten(1)).all(1) for v in snap.values()]).all(0)
    acc[~finite.to(acc.device)] = float("nan")  # diverged: dropped by the loader
    return snap, acc.cpu()


def split_of(arch: dict, model_id: int, seed: int, fractions=(0.5, 0.1, 0.4)) -> str:
    """The split of one network: ``test_unseen`` for unseen architectures, else a seeded draw per network."""
    if is_unseen(arch):
        return "test_unseen"
    u = np.random.default_rng([seed, model_id]).random()
    return "train" if u < fractions[0] else "val" if u < fractions[0] + fractions[1] else "test"


class WildParkDataset:
    """The networks of one split of a Wild Park folder (``build_wild_park``'s): ``(module, test_accuracy)`` items.

    ``archs[i]`` is item i's architecture; ``modules`` build lazily. Non-finite (diverged) networks are dropped.
    """

    def __init__(self, root, split: str = "train"):
        import pandas as pd

        from .input_checks import CorruptInputError, read_json_file
        from .shards import torch_load

        root = Path(root)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        for f in ("meta.json", "metrics.csv"):
            if not (root / f).is_file():
                raise FileNotFoundError(f"Wild Park folder {root} lacks {f} (unfinished build? rerun "
                                        f"python -m dng_tgn.data.build_wild_park --out {root})")
        meta = read_json_file(root / "meta.json", "Wild Park meta.json")
        metrics = pd.read_csv(root / "metrics.csv")
        need = {"model_id", "arch_id", "split", "test_accuracy"}
        if not need <= set(metrics.columns):
            raise CorruptInputError(f"{root / 'metrics.csv'}: lacks columns {sorted(need - set(metrics.columns))}")
        rows = metrics[(metrics["split"] == split) & np.isfinite(metrics["test_accuracy"])]
        if not len(rows):
            raise CorruptInputError(f"{root}: split {split!r} is empty")
        self.archs_all = meta["archs"]
        self._shards = {}
        self._load = lambda a: torch_load(root / "_shards" / f"arch_{a:05d}.pt", "Wild Park shard")
        self.rows = rows.reset_index(drop=True)
        self.targets = self.rows["test_accuracy"].to_numpy(dtype=np.float64)
        self.archs = [self.archs_all[int(a)] for a in self.rows["arch_id"]]

    def __len__(self):
        return len(self.rows)

    def state_dict(self, i: int) -> dict:
        a, j = int(self.rows["arch_id"][i]), int(self.rows["index_in_arch"][i])
        if a not in self._shards:
            self._shards[a] = self._load(a)
        return {k: v[j].clone() for k, v in self._shards[a]["params"].items()}

    def __getitem__(self, i):
        net = ParkCNN(**self.archs[i])
        net.load_state_dict(self.state_dict(i))
        return net.eval(), float(self.targets[i])


class StreamSet:
    """Networks of mixed architectures as pre-converted event streams; batches with :func:`batch_streams`.

    The mixed-architecture counterpart of :class:`~dng_tgn.data.StateDictSet` for the generalization task
    (``batch``, ``chunks``, ``targets``, ``len``); it has no stacked ``params``, so parameter-reading baselines refuse it.
    """

    def __init__(self, streams: list, targets, archs: list | None = None):
        if len(streams) != len(targets) or not streams:
            raise ValueError(f"{len(streams)} streams for {len(targets)} targets")
        self.streams, self.targets = streams, torch.as_tensor(np.asarray(targets))
        self.archs = archs

    @classmethod
    def from_dataset(cls, ds, desc: str = "converting", limit: int | None = None) -> "StreamSet":
        from ..graph import to_event_stream
        from ..progress import progress

        n = len(ds) if limit is None else min(limit, len(ds))
        streams, targets = [], []
        for i in progress(range(n), total=n, desc=desc, every_percent=100, unit="nets"):
            net, y = ds[i]
            streams.append(to_event_stream(net))
            targets.append(y)
        return cls(streams, targets, list(ds.archs[:n]))

    def __len__(self):
        return len(self.targets)

    def subset(self, idx) -> "StreamSet":
        """The networks at positions ``idx``, in that order."""
        idx = [int(i) for i in idx]
        return StreamSet([self.streams[i] for i in idx], self.targets[idx],
                         None if self.archs is None else [self.archs[i] for i in idx])

    def batch(self, idx):
        from ..graph.batch import batch_streams

        idx = torch.as_tensor(idx, dtype=torch.long)
        return batch_streams([self.streams[i] for i in idx.tolist()]), self.targets[idx]

    def chunks(self, batch_size: int):
        return list(torch.arange(len(self)).split(batch_size))

    def probe_batch(self):
        """One network per (timestamps, slots): a batch with the set's largest of each (sizes the encoder's tables)."""
        first = {}
        for i, s in enumerate(self.streams):
            first.setdefault((s.num_timestamps, s.num_slots), i)
        return self.batch(sorted(first.values()))[0]


def flops_per_image(arch: dict, side: int = 28) -> int:
    """Multiply-accumulates of one forward pass (the cost model the builder's progress bar uses)."""
    total, c_in, h = 0, 1, side
    for w, k, s in zip(arch["widths"], arch["kernels"], [2 if i < 2 else 1 for i in range(len(arch["widths"]))]):
        h = math.ceil(h / s)
        total += h * h * w * c_in * k * k
        c_in = w
    return total + c_in * 10
