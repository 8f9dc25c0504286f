"""A first look: convert a SIREN, a Small-CNN-Zoo CNN and a SimpleViT, print their event streams, check
that replaying each stream reproduces its network, and draw snapshots.

    python -m dng_tgn.demo [--out demo_out]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="demo_out", help="folder for the snapshot drawings (default: demo_out)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import dng_tgn
    from dng_tgn.nets import NFNSiren, SimpleViT, ZooCNN

    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    siren, cnn, vit = NFNSiren(), ZooCNN().eval(), SimpleViT().eval()
    streams = {
        "siren": (dng_tgn.to_event_stream(siren.state_dict()), siren, torch.rand(16, 2) * 2 - 1),
        "zoo_cnn": (dng_tgn.to_event_stream(cnn.state_dict()), cnn, torch.rand(4, 1, 28, 28) * 2 - 1),
        "simple_vit": (dng_tgn.to_event_stream(vit), vit, None),
    }
    for name, (stream, model, x) in streams.items():
        print(stream.summary())
        if x is not None:
            err = (dng_tgn.replay(stream, x) - model(x)).abs().max().item()
            print(f"  replay of the stream vs the model's own forward pass: max |diff| = {err:.2e}")
        else:
            rec = stream.recover_parameters()
            print(f"  every one of its {sum(v.numel() for v in rec.values())} parameters appears exactly once")
        n = min(stream.num_timestamps, 4)
        fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.5))
        for t, ax in zip(range(1, n + 1), axes):
            dng_tgn.draw_snapshot(stream, t, ax=ax, max_nodes_per_group=16)
        fig.tight_layout()
        fig.savefig(out / f"{name}_snapshots.png", dpi=90)
        plt.close(fig)
        print(f"  snapshots drawn to {out / f'{name}_snapshots.png'}\n")
    batch = dng_tgn.batch_streams([s for s, _, _ in streams.values()])
    print(f"one batch of all three: {batch}")


if __name__ == "__main__":
    main()
