"""torchrun data parallelism (dng_tgn.distributed): 2 gloo CPU processes equal 1 process with the same global batch.

One ``python -m torch.distributed.run --nproc_per_node 2 --standalone tests/_ddp_worker.py`` launch runs
everything that needs two processes (see ``tests/_ddp_worker.py``); the same functions run here in one process
for reference.

Tolerance: two processes average two half-batch means by an all-reduce where one process takes one mean over
the batch, so the float32 sums run in another order (relative rounding ~6e-8 per sum). 20 Adam steps carry
that to at most ~1e-6 here (measured max |Δloss| 3.6e-7, |Δweight| 6.0e-8); we ask for rtol 1e-5, atol 1e-6.
A run with the wrong batch semantics (per-rank batch = global batch) differs by up to 4.9 in loss (negative control).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import _ddp_worker as worker
from dng_tgn import distributed as dist
from dng_tgn.training import EpochSampler

ROOT = Path(__file__).resolve().parents[1]
RTOL, ATOL = 1e-5, 1e-6

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _clean_env(runs: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", DNG_RUNS_DIR=str(runs),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    for k in ("DNG_MONGO_URL", "DNG_KILL_AT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    out = tmp_path_factory.mktemp("two_ranks")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           str(ROOT / "tests" / "_ddp_worker.py"), str(out)]
    # the timeout only guards against a hang (a collective one rank never reaches); nothing is timed
    proc = subprocess.run(cmd, env=_clean_env(out / "runs"), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return out, [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.fixture(scope="module")
def one(tmp_path_factory):
    out = tmp_path_factory.mktemp("one_rank")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DNG_RUNS_DIR", str(out / "runs"))
        mp.delenv("DNG_MONGO_URL", raising=False)
        threads = torch.get_num_threads()
        rec = worker.run_all(out)
        torch.set_num_threads(threads)
    assert rec["world"] == 1
    return out, rec


def _close(a, b, what):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, what
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL, err_msg=what)
    return float(np.abs(a - b).max())


def _flat(weights):
    return np.concatenate([np.asarray(w) for w in weights])


# ------------------------------------------------------------------------------------------------ partition
def test_each_step_is_the_global_batch_cut_in_rank_order(two, one):
    _, ranks = two
    ref = one[1]["full"]["seen"]
    assert len(ranks[0]["full"]["seen"]) == len(ranks[1]["full"]["seen"]) == len(ref) == worker.STEPS
    for step, batch in enumerate(ref):
        pieces = [r["full"]["seen"][step] for r in ranks]
        assert [len(p) for p in pieces] == [worker.GLOBAL_BATCH // 2] * 2  # batch_size is the global batch
        assert pieces[0] + pieces[1] == batch


def test_epoch_partition_is_exact(two, one):
    _, ranks = two
    sampler = EpochSampler(worker.N_TRAIN, worker.GLOBAL_BATCH, seed=3)
    per = sampler.per_epoch
    for epoch in range(worker.STEPS // per):
        pieces = [sum(r["full"]["seen"][epoch * per:(epoch + 1) * per], []) for r in ranks]
        # 40 items, batch 8: drop_last leaves nothing out, so every item exactly once per epoch over the ranks
        dist.check_partition(pieces, range(worker.N_TRAIN))
        perm = torch.randperm(worker.N_TRAIN, generator=torch.Generator().manual_seed(3 + epoch)).tolist()
        single = sum(one[1]["full"]["seen"][epoch * per:(epoch + 1) * per], [])
        assert single == perm and sorted(pieces[0] + pieces[1]) == sorted(perm)


def test_partition_check_catches_overlap_and_gaps():
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    good = [dist.shard_batch(perm, r, 3).tolist() for r in range(3)]
    dist.check_partition(good, range(12))
    overlapping = [dist.shard_batch(perm, 0, 3).tolist() for _ in range(3)]  # every rank takes rank 0's piece
    with pytest.raises(AssertionError, match="seen by rank 0 and rank 1"):
        dist.check_partition(overlapping, range(12))
    with pytest.raises(AssertionError, match="missing"):
        dist.check_partition(good[:2], range(12))  # a rank's piece skipped


def test_uneven_pieces_cover_everything():
    for n in range(0, 11):
        for world in (1, 2, 3, 4):
            bounds = [dist.shard_bounds(n, r, world) for r in range(world)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            assert max(e - s for s, e in bounds) - min(e - s for s, e in bounds) <= 1
    assert dist.my_share(list(range(7)), 1, 3) == [1, 4]


def test_global_batch_must_divide_by_the_processes():
    assert dist.local_batch_size(12, 4) == 3
    with pytest.raises(dist.DistributedConfigError, match=r"batch_size=10 .* 4 processes"):
        dist.local_batch_size(10, 4)


def test_single_process_is_a_no_op():
    assert dist.world_size() == 1 and dist.is_main() and not dist.is_initialized()
    idx = torch.arange(5)
    assert dist.shard_batch(idx) is idx
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    dist.average_gradients([p])
    assert p.grad.tolist() == [2.0, 2.0, 2.0]
    assert dist.broadcast_object({"a": 1}) == {"a": 1}
    assert dist.backend_for("cpu") == "gloo"


def test_rank_and_world_size_come_from_one_source(monkeypatch):
    """Both from the process group once joined, else both (0, 1); a torchrun process outside its group is refused."""
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert (dist.rank(), dist.world_size()) == (0, 1)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun with one process: a single process
    assert (dist.rank(), dist.world_size()) == (0, 1)
    # torchrun's variables for rank 1 of 2, group not joined: rank() used to read 1 from them while world_size()
    # said 1, so my_share gave this rank nothing (k % 1 == 1 never holds); now neither guesses
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    for f in (dist.rank, dist.world_size, dist.is_main, lambda: dist.my_share(list(range(4)))):
        with pytest.raises(dist.DistributedConfigError, match=r"RANK=1, WORLD_SIZE=2 .*init_from_env\(\)"):
            f()
    # a joined group is the one source, whatever the environment says (here: a group of one against RANK=1 of 2)
    torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)
    try:
        assert (dist.rank(), dist.world_size(), dist.is_main()) == (0, 1, True)
        assert dist.my_share(list(range(4))) == [0, 1, 2, 3]
    finally:
        torch.distributed.destroy_process_group()
    assert not dist.is_initialized()


# ------------------------------------------------------------------------------------------------ equality
def test_two_processes_equal_one_with_the_same_global_batch(two, one):
    _, ranks = two
    ref = one[1]["full"]
    diffs = {}
    for r in ranks:  # every rank logs the global loss and holds the same model
        diffs["loss"] = _close(r["full"]["loss"], ref["loss"], "training loss curve")
        diffs["val"] = _close(r["full"]["val"], ref["val"], "validation curve")
        diffs["weights"] = _close(_flat(r["full"]["weights"]), _flat(ref["weights"]), "final weights")
        assert r["full"]["best_metric"] == pytest.approx(ref["best_metric"], rel=RTOL, abs=ATOL)
    # the ranks apply one all-reduced gradient: their models are the same to the bit
    assert _flat(ranks[0]["full"]["weights"]).tolist() == _flat(ranks[1]["full"]["weights"]).tolist()
    print(f"max |2 processes - 1 process|: {diffs}")


def test_per_rank_batch_equal_to_the_global_batch_differs(two, one):
    """Negative control: the wrong semantics (each rank a whole batch) must not pass the equality check."""
    _, ranks = two
    wrong, ref = ranks[0]["wrong_batch"]["loss"], one[1]["full"]["loss"]
    assert len(wrong) == len(ref)
    gap = np.abs(np.asarray(wrong) - np.asarray(ref)).max()
    print(f"per-rank batch = global batch: max |Δloss| {gap:.3g}")
    assert gap > 1e-2
    with pytest.raises(AssertionError):
        _close(wrong, ref, "wrong batch semantics")


def test_resume_under_two_processes_continues_exactly(two):
    out, ranks = two
    for r in ranks:
        full, resumed = r["full"], r["resumed"]
        assert resumed["seen"] == full["seen"][worker.STEPS // 2:]  # the batches the uninterrupted run drew
        assert resumed["loss"] == full["loss"][worker.STEPS // 2:]
        assert _flat(resumed["weights"]).tolist() == _flat(full["weights"]).tolist()


def test_each_rank_draws_its_own_random_stream(two, one):
    """Dropout-like draws differ between ranks (else item j of rank 1 would get rank 0's mask j); one process
    keeps the stream its seed gives (no fork)."""
    _, ranks = two
    a, b = ranks[0]["full"]["draws"], ranks[1]["full"]["draws"]
    assert len(a) == len(b) == worker.STEPS
    assert a != b
    assert a != one[1]["full"]["draws"] and b != one[1]["full"]["draws"]


def test_resume_restores_each_ranks_own_stream(two):
    """A resumed rank continues its *own* stream: rank 1 must not pick up rank 0's (control: the two differ)."""
    _, ranks = two
    half = worker.STEPS // 2
    for r in ranks:
        assert r["resumed"]["draws"] == r["full"]["draws"][half:]
    assert ranks[1]["resumed"]["draws"] != ranks[0]["full"]["draws"][half:]


def test_only_rank_zero_writes(two):
    out, _ = two
    for phase in ("full", "half", "resumed", "wrong_batch"):
        assert sorted(p.name for p in (out / phase / "ck" / "rank0").iterdir()), phase
        assert not (out / phase / "ck" / "rank1").exists(), f"rank 1 wrote checkpoints in {phase}"
    runs = sorted(p.name for p in (out / "runs" / "static_vs_dynamic").iterdir() if p.name != "_sources")
    assert runs == ["1"]  # one Sacred record, not one per process
    record = json.loads((out / "runs" / "static_vs_dynamic" / "1" / "run.json").read_text())
    assert record["status"] == "COMPLETED"
    assert list((out / "runs" / "static_vs_dynamic" / "1").glob("*.step*.pt"))  # rank 0's checkpoints


def _numbers(tree, prefix="") -> dict[str, float]:
    """Every number of a result dict by its path, wall times left out (they are not results)."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() if "seconds" not in str(key)
                for k, v in _numbers(sub, f"{prefix}/{key}").items()}
    if isinstance(tree, (list, tuple)):
        return {k: v for i, sub in enumerate(tree) for k, v in _numbers(sub, f"{prefix}/{i}").items()}
    return {prefix: float(tree)} if isinstance(tree, (int, float)) and not isinstance(tree, bool) else {}


def test_static_vs_dynamic_under_torchrun_equals_one_process(two, one):
    _, ranks = two
    ref = _numbers(one[1]["svd"])
    info = json.loads((two[0] / "runs" / "static_vs_dynamic" / "1" / "info.json").read_text())["results"]
    assert any("test_mse" in k for k in ref)
    for got in [_numbers(r["svd"]) for r in ranks] + [_numbers(info)]:
        assert sorted(got) == sorted(ref)
        gap = _close([got[k] for k in sorted(ref)], [ref[k] for k in sorted(ref)], "§7 results (test MSE, losses)")
        print(f"§7 tiny, 2 processes vs 1: max |Δ| over {len(ref)} result numbers {gap:.3g}")


def test_builder_shards_split_over_ranks_give_the_same_zoo(two, one):
    def tree(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    got, ref = tree(two[0] / "zoo"), tree(one[0] / "zoo")
    assert sorted(got) == sorted(ref)
    assert [k for k in ref if ref[k] != got[k]] == []
