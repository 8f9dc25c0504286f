"""Draw the README's gallery image: one MNIST SIREN as a dynamic neural graph and its DNG-Encoder memories.

    .venv/bin/python scripts/make_gallery.py [--out docs/gallery.png]

Panels: (a) the digit the SIREN represents (fitted here, 300 Adam steps, as ``build_inrs`` does); (b) the snapshot
G(t^2) of its event stream (edges coloured by weight); (c) every node's memory over the timestamps, projected on
the first principal component of all states (a node is zero until the stream writes it); (d) the final memories
s(t^L), one row per node. The encoder is randomly initialised (seed 0): the picture shows the mechanism, not a
trained model. Needs MNIST in ``$DNG_DATA_DIR`` (``scripts/install_data.sh``); about 25 s of CPU time.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import dng_tgn  # noqa: E402
from dng_tgn import DNGEncoder  # noqa: E402
from dng_tgn.data.siren_fit import coord_grid, fit_sirens, images_to_targets, render_nfn, to_state_dicts  # noqa: E402
from dng_tgn.data.sources import load_images, to_signed  # noqa: E402
from dng_tgn.graph.draw import draw_snapshot_colored  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="docs/gallery.png")
    p.add_argument("--index", type=int, default=0, help="MNIST test image to fit")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    images, _ = load_images("mnist", "test")
    x = to_signed(images[args.index:args.index + 1])
    params, mse, _ = fit_sirens(images_to_targets(x), coord_grid(28, 28, "ij"), steps=300, lr=1e-3,
                                generator=torch.Generator().manual_seed(0))
    sd = to_state_dicts(params)[0]
    stream = dng_tgn.to_event_stream(sd)
    encoder = DNGEncoder(16, fourier_size=16, max_timestamps=stream.num_timestamps, device="cpu").eval()
    with torch.no_grad():
        traj = encoder([stream], return_trajectory=True).trajectory  # (T+1, N, d)

    fig, axes = plt.subplots(1, 4, figsize=(13, 3.3), gridspec_kw={"width_ratios": [0.7, 1.5, 1.1, 1.2]})
    psnr = float(10 * torch.log10(4 / mse[0]))
    axes[0].imshow(((render_nfn(sd, 28, 28)[0].clamp(-1, 1) + 1) / 2).numpy(), cmap="gray", vmin=0, vmax=1)
    axes[0].set_title(f"(a) the SIREN's image\n(PSNR {psnr:.1f} dB)", fontsize=8)
    axes[0].set_axis_off()
    draw_snapshot_colored(stream, 2, ax=axes[1], max_nodes_per_group=32)
    axes[1].set_title("(b) snapshot G(t^2): the 32x32 hidden weights", fontsize=8)

    T, N, d = traj.shape
    flat = traj.reshape(-1, d)
    _, _, v = torch.pca_lowrank(flat, q=1, center=True)
    pc1 = ((traj - flat.mean(0)) @ v)[..., 0].T  # (N, T)
    m = float(pc1.abs().max())
    im = axes[2].imshow(pc1.numpy(), aspect="auto", cmap="RdBu_r", vmin=-m, vmax=m, interpolation="nearest")
    axes[2].set_xticks(range(T), [f"t^{t}" for t in range(T)], fontsize=7)
    axes[2].set_title("(c) node memories over time (PC 1)", fontsize=8)
    fig.colorbar(im, ax=axes[2], shrink=0.8)
    m = float(traj[-1].abs().max())
    im = axes[3].imshow(traj[-1].numpy(), aspect="auto", cmap="RdBu_r", vmin=-m, vmax=m, interpolation="nearest")
    axes[3].set_xlabel("memory dimension", fontsize=7)
    axes[3].set_title("(d) final memories s(t^L)", fontsize=8)
    fig.colorbar(im, ax=axes[3], shrink=0.8)
    groups = stream.node_groups
    for ax in axes[2:]:
        for g in groups[1:]:
            ax.axhline(g.offset - 0.5, color="k", lw=0.5)
    axes[2].set_yticks([g.offset + (g.size - 1) / 2 for g in groups], [g.name for g in groups], fontsize=6)
    axes[3].set_yticks([])
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=72)
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
