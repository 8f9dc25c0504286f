"""experiments/static_vs_dynamic.py (§7) end to end at the ``tiny`` config: metrics, PNG, MongoDB."""
from __future__ import annotations

import json
import math
import sys
import uuid
import warnings
from pathlib import Path

import pytest
import torch

from dng_tgn import tracking
from dng_tgn.baselines import node_layer_index
from dng_tgn.tracking import MongoUnreachableWarning

# `experiments` is a top-level package of the repository, not of the installed dng_tgn: plain `pytest`
# (unlike `python -m pytest`) does not put the repository root on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import experiments.static_vs_dynamic as sv  # noqa: E402
from dng_tgn.data.activations import ActivationData  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_NAME = "static_vs_dynamic_mse.png"
TINY = {"runtime": {"device": "cpu"}}
TRAINED = ("static_forward", "static_bidirectional", "dynamic")  # the models a default run trains


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def isolated_env(runs_root):
    return runs_root / "static_vs_dynamic"


def read_metrics(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


def check_on_disk(run_dir):
    metrics = read_metrics(run_dir)
    info = json.loads((run_dir / "info.json").read_text())
    for name in TRAINED:
        assert len(metrics[f"{name}.train.loss"]["values"]) == 2  # tiny: 2 epochs
        assert metrics[f"{name}.val.mse.layer3"]["steps"] == [1, 2]  # validation every epoch
        assert metrics[f"{name}.val.mse"]["steps"] == [1, 2]
        for layer in (1, 2, 3):
            v = info["results"][name]["test_mse"][str(layer)]
            assert v > 0 and v == v  # finite, positive MSE
    # the test set is read once, at the end: never a curve that could steer a choice
    assert not [k for k in metrics if ".test." in k]
    # constants (model sizes) and single final values are info / result, never metrics
    assert not [k for k in metrics if k.endswith(".params") or ".final." in k]
    assert (run_dir / PNG_NAME).read_bytes().startswith(PNG_SIGNATURE)
    assert set(info["results"]) == {*TRAINED, "static", "ratio"}
    assert info["params"]["static_forward"] > 0
    assert info["params"]["dynamic"] == info["results"]["dynamic"]["params"]



def test_targets_are_the_mlp_forward_pass():
    data = ActivationData(3, [2, 4, 4, 3], "tanh", 1.5, 0.5, inputs_per_mlp=2, seed=0)
    batch, inputs, targets = data.batch(torch.tensor([2, 0]))
    assert batch.num_graphs == 4 and inputs.shape == (4, 2)
    layer = node_layer_index(batch)
    # recompute network 2's forward pass on its 2nd input with an nn.Sequential built from the same weights
    net = torch.nn.Sequential(*[torch.nn.Linear(4 if l else 2, w) for l, w in enumerate([4, 4, 3])])
    for l, lin in enumerate(net):
        lin.weight.data, lin.bias.data = data.weights[l][2], data.biases[l][2]
    a, x = [], data.x[2, 1]
    for lin in net:
        x = torch.tanh(lin(x))
        a.append(x)
    graph1 = batch.node_graph == 1
    for l in (1, 2, 3):
        assert torch.allclose(targets[graph1 & (layer == l)], a[l - 1], atol=1e-6)
    assert torch.equal(inputs[1], data.x[2, 1])


def test_tiny_run_completes_on_disk_when_mongo_is_unreachable(unreachable_mongo_url, isolated_env, monkeypatch):
    monkeypatch.setenv(tracking.ENV_MONGO_URL, unreachable_mongo_url)
    with pytest.warns(MongoUnreachableWarning):
        run = sv.ex.run(named_configs=["tiny"], config_updates=TINY)
    assert run.status == "COMPLETED"
    assert set(run.result) == {*TRAINED, "static", "ratio"}
    for name in (*TRAINED, "static"):
        assert set(run.result[name]["test_mse"]) == {"1", "2", "3"}
    static = run.result["static"]
    for l in ("1", "2", "3"):  # the reported static model is, per layer, the chosen direction's own numbers
        chosen = run.result[f"static_{static['direction'][l]}"]
        assert static["test_mse"][l] == chosen["test_mse"][l] and static["val_mse"][l] == chosen["val_mse"][l]
        assert run.result["ratio"][l] == run.result["dynamic"]["test_mse"][l] / static["test_mse"][l]
    check_on_disk(isolated_env / str(run._id))


def test_run_config_metrics_and_png_reach_mongodb(mongo_server, isolated_env):
    import gridfs
    import pymongo

    db_name = f"test_{uuid.uuid4().hex[:12]}"
    with warnings.catch_warnings():
        warnings.simplefilter("error", MongoUnreachableWarning)
        run = sv.ex.run(named_configs=["tiny"], config_updates={**TINY, "optim": {"lr": 0.002}},
                        options={"--mongo": f"{mongo_server}/{db_name}"})
    assert run.status == "COMPLETED"
    client = pymongo.MongoClient(mongo_server, serverSelectionTimeoutMS=2000)
    try:
        db = client[db_name]
        doc = db.runs.find_one({"_id": run._id})
        assert doc is not None and doc["status"] == "COMPLETED"
        assert doc["experiment"]["name"] == "static_vs_dynamic"
        assert doc["config"]["optim"]["lr"] == 0.002 and doc["config"]["data"]["n_train"] == 8
        assert set(doc["info"]["results"]) == {*TRAINED, "static", "ratio"}
        for name in TRAINED:
            loss = db.metrics.find_one({"run_id": run._id, "name": f"{name}.train.loss"})
            assert loss is not None and loss["steps"] == [1, 2]
            assert doc["result"][name]["test_mse"]["3"] > 0 and doc["info"]["params"][name] > 0
            assert db.metrics.find_one({"run_id": run._id, "name": f"{name}.params"}) is None
        artifacts = {a["name"]: a["file_id"] for a in doc["artifacts"]}
        assert PNG_NAME in artifacts
        png = gridfs.GridFS(db).get(artifacts[PNG_NAME]).read()
    finally:
        client.close()
    assert png.startswith(PNG_SIGNATURE)
    assert (isolated_env / str(run._id) / PNG_NAME).read_bytes() == png


def test_bad_config_values_fail_clearly():
    with pytest.raises(ValueError, match="activation"):
        ActivationData(2, [2, 3], "swish", 1.0, 0.1, 1, 0)
    with pytest.raises(ValueError, match="unknown models"):
        sv.ex.run(named_configs=["tiny"], config_updates={**TINY, "models": ["static", "gat"]})
    for workers in (0, -1):  # 0 was once read as "unset" and trained one model at a time
        with pytest.raises(ValueError, match=f"runtime.workers must be >= 1, got {workers}"):
            sv.ex.run(named_configs=["tiny"], config_updates={"runtime": {"device": "cpu", "workers": workers}})


def test_command_line_output_is_plain_lines_ending_with_the_summary(tmp_path):
    """In a file (not a terminal): no tqdm redraws, no pkg_resources warning, the summary last in cout.txt."""
    import os
    import subprocess

    env = {**os.environ, tracking.ENV_RUNS_DIR: str(tmp_path / "runs"), "PYTHONWARNINGS": "default"}
    env.pop(tracking.ENV_MONGO_URL, None)
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "experiments.static_vs_dynamic", "with", "tiny", "runtime.device=cpu",
                           "runtime.num_threads=1"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "pkg_resources" not in proc.stderr + proc.stdout
    run_dir = tmp_path / "runs" / "static_vs_dynamic" / "1"
    cout = (run_dir / "cout.txt").read_text()
    assert "\r" not in cout and "static_forward: 2/2 epoch (100%)" in cout
    assert "Result: {" not in cout  # the raw result dict is in run.json; the summary says it readably
    assert cout.rstrip().splitlines()[-1].startswith("params ")  # the summary is the last thing
    assert json.loads((run_dir / "run.json").read_text())["status"] == "COMPLETED"


# ------------------------------------------------------------------------------------------------ early stopping
def _tiny_data():
    shape = dict(widths=[2, 4, 4, 4], act_name="tanh", weight_gain=1.5, bias_std=0.5, inputs_per_mlp=2)
    return (ActivationData(6, seed=1, **shape), ActivationData(3, seed=5, **shape),
            ActivationData(3, seed=2, **shape))


def _fit(tmp_path, *, lr, patience, epochs=8, name="dynamic", **kw):
    from dng_tgn.baselines import DynamicMPNN
    from dng_tgn.tasks.static_vs_dynamic import train_model

    train, val, test = _tiny_data()
    torch.manual_seed(0)
    model = DynamicMPNN(hidden_dim=8, num_layers=3, fourier_size=2)
    out = train_model(name, model, train, val, test, epochs=epochs, patience=patience, batch_size=3, lr=lr,
                      weight_decay=0.0, grad_clip=1.0, eval_every=1, device="cpu", seed=4,
                      checkpoint_dir=tmp_path / "ck", keep_checkpoints=1, **kw)
    return model, out, (train, val, test)


def test_early_stopping_stops_after_patience_validations_without_improvement(tmp_path):
    # lr = 0: the weights never move, so the validation MSE never improves on epoch 1's
    _, out, _ = _fit(tmp_path / "a", lr=0.0, patience=2)
    assert out["best_epoch"] == 1 and out["epochs_run"] == 3
    assert [h["epoch"] for h in out["history"]] == [1, 2, 3]
    # negative control: without patience the same run trains every epoch
    _, out, _ = _fit(tmp_path / "b", lr=0.0, patience=None)
    assert out["epochs_run"] == 8


def test_result_is_read_at_the_best_validation_weights(tmp_path):
    from dng_tgn.tasks.static_vs_dynamic import evaluate
    from dng_tgn.training import load_checkpoint

    model, out, (_, val, test) = _fit(tmp_path, lr=0.1, patience=None, epochs=8)
    vals = [h["val_mse"] for h in out["history"]]
    assert out["best_epoch"] == 1 + vals.index(min(vals)) and out["best_val_mse"] == min(vals)
    assert out["test_mse"] == evaluate(model, test, 3, "cpu")  # the returned model holds the best weights
    assert out["val_mse"] == evaluate(model, val, 3, "cpu")
    best = load_checkpoint(tmp_path / "ck" / f"dynamic.step{out['best_epoch']:08d}.pt")  # kept beside the last
    assert all(torch.equal(best.model[k], v) for k, v in model.state_dict().items())
    # negative control: lr 0.1 overshoots, so the best epoch is not the last (asserted, so the control always
    # runs), and the last epoch's weights give other numbers
    assert out["best_epoch"] != 8, out["history"]
    last = load_checkpoint(tmp_path / "ck" / "dynamic.step00000008.pt")
    model.load_state_dict(last.model)
    assert evaluate(model, test, 3, "cpu") != out["test_mse"]


def test_bad_patience_fails_clearly(tmp_path):
    with pytest.raises(ValueError, match="patience must be >= 1"):
        _fit(tmp_path, lr=0.0, patience=0)


def _improves(vals, min_delta):
    """Which validations reset the patience: below (1 - min_delta) x the last one that did (train_model's rule)."""
    ref, out = float("inf"), []
    for v in vals:
        out.append(v < ref * (1 - min_delta))
        ref = v if out[-1] else ref
    return out


def test_plateau_schedule_cuts_the_rate_and_stops_on_validation_only(tmp_path):
    # min_delta 0.3: only a 30 % drop of the validation MSE counts as progress, so this run stalls quickly
    kw = dict(schedule="plateau", lr_factor=0.5, lr_patience=2, min_delta=0.3)
    _, out, _ = _fit(tmp_path / "a", lr=0.03, patience=4, epochs=30, **kw)
    hist = out["history"]
    vals, lrs = [h["val_mse"] for h in hist], [h["lr"] for h in hist]
    assert out["epochs_run"] < 30  # early stopping fired before the cap
    # replay the rule from the logged validation MSEs alone: the stop and every cut follow from them
    ok, stale, lr, expected_lrs = _improves(vals, 0.3), 0, 0.03, []
    for i, good in enumerate(ok):
        expected_lrs.append(lr)
        stale = 0 if good else stale + 1
        if stale and stale % 2 == 0:  # lr_patience = 2 bad validations since the last cut or improvement
            lr *= 0.5
    assert lrs == pytest.approx(expected_lrs, rel=1e-12)
    assert min(lrs) < 0.03  # at least one cut happened, so the check above saw one
    assert ok[-5:] == [True] + [False] * 4  # stopped at the 4th validation after the last progress
    assert out["best_epoch"] == 1 + vals.index(min(vals))  # the result is the lowest validation, not the last
    # negative control: with min_delta 0 every new best is progress, so the same run trains on for longer
    _, loose, _ = _fit(tmp_path / "b", lr=0.03, patience=4, epochs=30, **{**kw, "min_delta": 0.0})
    assert loose["epochs_run"] > out["epochs_run"]


def test_constant_schedule_keeps_the_rate_and_cosine_decays_it(tmp_path):
    _, const, _ = _fit(tmp_path / "c", lr=0.01, patience=None, epochs=3, schedule="constant")
    assert [h["lr"] for h in const["history"]] == [0.01] * 3
    _, cos, _ = _fit(tmp_path / "d", lr=0.01, patience=None, epochs=3, schedule="cosine")  # control
    lrs = [h["lr"] for h in cos["history"]]
    assert lrs[0] < 0.01 and lrs[2] < lrs[1] < lrs[0]


def test_bad_schedule_settings_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="unknown schedule of .*'step'; valid values are 'cosine', 'plateau', 'constant'"):
        _fit(tmp_path, lr=0.01, patience=2, schedule="step")
    with pytest.raises(ValueError, match="lr_factor must be in"):
        _fit(tmp_path, lr=0.01, patience=2, schedule="plateau", lr_factor=1.0)
    with pytest.raises(ValueError, match="min_delta"):
        _fit(tmp_path, lr=0.01, patience=2, schedule="plateau", min_delta=-0.1)


def test_resuming_under_another_schedule_is_refused(tmp_path):
    from dng_tgn.training import CheckpointError

    _fit(tmp_path / "a", lr=0.01, patience=None, epochs=2, schedule="cosine")
    ck = tmp_path / "a" / "ck" / "dynamic.step00000002.pt"
    with pytest.raises(CheckpointError, match="'cosine' schedule.*'plateau'"):
        _fit(tmp_path / "b", lr=0.01, patience=None, epochs=3, schedule="plateau", resume_path=ck)
    # control: under the same schedule the (finished) checkpoint resumes to its own result
    _, out, _ = _fit(tmp_path / "c", lr=0.01, patience=None, epochs=2, schedule="cosine", resume_path=ck)
    assert out["epochs_run"] == 2


def test_models_trained_side_by_side_get_exactly_their_numbers_alone(tmp_path):
    from dng_tgn.baselines import DynamicMPNN, StaticMPNN
    from dng_tgn.tasks.static_vs_dynamic import train_concurrently

    train, val, test = _tiny_data()
    kw = dict(epochs=3, patience=None, batch_size=3, lr=0.01, weight_decay=0.0, grad_clip=1.0, eval_every=1,
              device="cpu", keep_checkpoints=1, schedule="plateau")

    def jobs():
        out = []
        for name, cls in (("static_forward", StaticMPNN), ("dynamic", DynamicMPNN)):
            torch.manual_seed(0)
            out.append((name, cls(hidden_dim=8, num_layers=3, fourier_size=2), None))
        return out

    alone = train_concurrently(jobs(), train, val, test, workers=1, seed=4, checkpoint_dir=tmp_path / "1", **kw)
    together = train_concurrently(jobs(), train, val, test, workers=2, seed=4, checkpoint_dir=tmp_path / "2", **kw)
    assert list(together) == ["static_forward", "dynamic"]  # jobs order, whatever order they ran in
    for name in alone:
        for key in ("test_mse", "val_mse", "history", "best_epoch", "params"):
            assert together[name][key] == alone[name][key], (name, key)
    # negative control: another batch order (seed) moves the numbers, so the comparison above can fail
    other = train_concurrently(jobs(), train, val, test, workers=2, seed=5, checkpoint_dir=tmp_path / "3", **kw)
    assert other["dynamic"]["test_mse"] != alone["dynamic"]["test_mse"]


# ------------------------------------------------------------------------------------------------ static choice
def test_static_direction_is_chosen_per_layer_on_static_validation_only():
    from dng_tgn.tasks.static_vs_dynamic import choose_static

    fwd = {"val_mse": {1: 0.1, 2: 0.5, 3: 0.2}, "test_mse": {1: 0.9, 2: 0.01, 3: 0.3}}
    bid = {"val_mse": {1: 0.2, 2: 0.4, 3: 0.3}, "test_mse": {1: 0.01, 2: 0.9, 3: 0.1}}
    got = choose_static({"forward": fwd, "bidirectional": bid})
    # test favours the other direction at every layer: the choice must follow validation regardless
    assert got["direction"] == {1: "forward", 2: "bidirectional", 3: "forward"}
    assert got["test_mse"] == {1: 0.9, 2: 0.9, 3: 0.3}
    # negative control: swap the validation scores and every choice flips
    fwd["val_mse"], bid["val_mse"] = bid["val_mse"], fwd["val_mse"]
    assert choose_static({"forward": fwd, "bidirectional": bid})["direction"] == {
        1: "bidirectional", 2: "forward", 3: "bidirectional"}


def test_unknown_static_direction_fails_clearly():
    with pytest.raises(ValueError, match="static_directions"):
        sv.ex.run(named_configs=["tiny"], config_updates={**TINY, "model": {"static_directions": ["backward"]}})


# ------------------------------------------------------------------------------------------------ seeds command
def test_seeds_command_writes_one_file_per_seed_skips_finished_and_reports(tmp_path, monkeypatch):
    import experiments.static_vs_dynamic_seeds as seeds

    monkeypatch.chdir(tmp_path)
    assert seeds.main(["--scale", "tiny", "--seeds", "0,1"]) == 0
    for s in (0, 1):
        assert seeds.seed_file("tiny", s).is_file()
    doc = json.loads((tmp_path / "results" / "static_vs_dynamic.json").read_text())
    assert {"scale", "machine", "date", "command", "seeds"} <= set(doc) and doc["seeds"] == [0, 1]
    assert doc["scale"] == "tiny" and "--seeds 0,1" in doc["command"]
    for l in ("1", "2", "3"):
        st, dy = doc["static"]["test_mse"][l], doc["dynamic"]["test_mse"][l]
        assert len(st) == len(dy) == 2 and dy[0] != dy[1]  # seeds differ
        assert doc["ratio"][l] == pytest.approx([d / s for d, s in zip(dy, st)], rel=1e-12)
        assert doc["ratio_mean"][l] == pytest.approx(sum(doc["ratio"][l]) / 2)
        assert set(doc["static"]["direction"][l]) <= {"forward", "bidirectional"}
    assert doc["targets"] == {"1": 1.1, "2": 0.33, "3": 0.33}
    assert (tmp_path / "results" / "static_vs_dynamic.png").read_bytes().startswith(PNG_SIGNATURE)
    assert "| 2 |" in (tmp_path / "results" / "static_vs_dynamic.md").read_text()

    # finished seeds are skipped: a rerun with one more seed runs only that one
    ran = []
    real = seeds.run_seed
    monkeypatch.setattr(seeds, "run_seed", lambda scale, s: ran.append(s) or real(scale, s))
    assert seeds.main(["--scale", "tiny", "--seeds", "0,1,2"]) == 0
    assert ran == [2]
    assert json.loads((tmp_path / "results" / "static_vs_dynamic.json").read_text())["seeds"] == [0, 1, 2]


def test_seeds_of_another_protocol_or_config_never_enter_a_report(tmp_path, monkeypatch):
    import experiments.static_vs_dynamic_seeds as seeds

    monkeypatch.chdir(tmp_path)
    # a finished seed of the old protocol (v1 kept its files directly under <scale>/) is not a seed of this one
    old = tmp_path / "results" / "rows" / "static_vs_dynamic" / "tiny" / "seed0.json"
    old.parent.mkdir(parents=True)
    old.write_text(json.dumps({"seed": 0, "config": {"optim": {"schedule": "cosine"}}}))
    assert seeds.PROTOCOL in seeds.seed_file("tiny", 0).parts and seeds.seed_file("tiny", 0) != old
    assert seeds.collect("tiny")["seeds"] == []
    # two seeds of this protocol's folder run with different configs: refused, naming the odd one
    for s, lr in ((0, 0.01), (1, 0.003)):
        f = seeds.seed_file("tiny", s)
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps({"seed": s, "config": {"optim": {"lr": lr}}}))
    with pytest.raises(ValueError, match=r"seeds \[1\] .* another config"):
        seeds.collect("tiny")
    # control: with equal configs the same check passes (and fails later only for want of results)
    seeds.seed_file("tiny", 1).write_text(json.dumps({"seed": 1, "config": {"optim": {"lr": 0.01}}}))
    with pytest.raises(KeyError):
        seeds.collect("tiny")


def test_a_failing_model_stops_the_one_beside_it_promptly(tmp_path):
    """With models side by side, the first failure surfaces at once and the other model stops at its next epoch
    (control: alone, the same model trains all its epochs)."""
    from dng_tgn.baselines import DynamicMPNN, StaticMPNN
    from dng_tgn.tasks.static_vs_dynamic import train_concurrently

    train, val, test = _tiny_data()
    kw = dict(patience=None, batch_size=3, lr=0.01, weight_decay=0.0, grad_clip=1.0, eval_every=1, device="cpu",
              keep_checkpoints=1, schedule="constant", seed=0)

    class Broken(StaticMPNN):
        def forward(self, *a, **k):
            raise FloatingPointError("broken model")

    calls = []

    class Counted(DynamicMPNN):
        def forward(self, *a, **k):
            calls.append(1)
            return super().forward(*a, **k)

    def counted():
        torch.manual_seed(0)
        return Counted(hidden_dim=8, num_layers=3, fourier_size=2)

    jobs = [("static_bidirectional", Broken(hidden_dim=8, num_layers=3, fourier_size=2), None),
            ("dynamic", counted(), None)]
    with pytest.raises(FloatingPointError, match="broken model"):
        train_concurrently(jobs, train, val, test, workers=2, epochs=500, checkpoint_dir=tmp_path / "a", **kw)
    per_epoch = math.ceil(train.n / 3) + math.ceil(val.n / 3)  # training + validation forwards
    assert len(calls) < 20 * per_epoch, len(calls)  # stopped within a few epochs, not after 500
    calls.clear()
    out = train_concurrently([("dynamic", counted(), None)], train, val, test, workers=2, epochs=5,
                             checkpoint_dir=tmp_path / "b", **kw)
    assert out["dynamic"]["epochs_run"] == 5 and len(calls) >= 5 * math.ceil(train.n / 3)


# ------------------------------------------------------------------------------------------------ speed-up
def _concatenating_embed(model, batch, inputs):
    """The static MPNN as Eq. 2 writes it: every φ reads concatenated per-edge blocks (the reference)."""
    from dng_tgn.baselines.ng_gnn import union_edges
    from dng_tgn.nn.paths import ExecutionPath
    from dng_tgn.nn.segment import segment_sum

    edges = union_edges(batch, model.bidirectional)
    h = model.initial_nodes(batch, inputs)
    e = model.edge_enc(edges.weight)
    if model.reverse_emb is not None:
        e = e + edges.reverse.unsqueeze(1) * model.reverse_emb
    for k in range(model.num_layers):
        phi = model.phi(k)
        m = phi.message(torch.cat([h[edges.src], e], dim=1))
        agg = segment_sum(m, edges.src, edges.dst, h.shape[0], h.shape[0], ExecutionPath.TORCH)
        h = phi.update(torch.cat([agg, h], dim=1))
        if k < model.num_layers - 1:
            e = model.edge_updates[k](torch.cat([e, h[edges.src], h[edges.dst]], dim=1))
    return h


@pytest.mark.parametrize("bidirectional", [False, True])
def test_static_mpnn_projects_nodes_once_and_computes_the_concatenating_formula(bidirectional):
    """The §7 models' φ_m / φ_e use edge_mlp (per-node projections gathered onto edges): the same outputs and
    gradients as the per-edge concatenation (control: a changed edge-update weight moves the output)."""
    from dng_tgn.baselines import StaticMPNN

    data, _, _ = _tiny_data()
    batch, inputs, _ = data.batch(torch.arange(3))
    torch.manual_seed(0)
    model = StaticMPNN(hidden_dim=8, num_layers=3, fourier_size=2, bidirectional=bidirectional)
    fast, ref = model.embed(batch, inputs), _concatenating_embed(model, batch, inputs)
    assert torch.allclose(fast, ref, atol=1e-5, rtol=1e-5)
    g_fast = torch.autograd.grad(fast.square().sum(), list(model.parameters()), allow_unused=True)
    g_ref = torch.autograd.grad(_concatenating_embed(model, batch, inputs).square().sum(), list(model.parameters()),
                                allow_unused=True)
    for a, b in zip(g_fast, g_ref):
        assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, atol=1e-4, rtol=1e-4))
    with torch.no_grad():
        model.edge_updates[0][0].weight.add_(0.5)
    assert not torch.allclose(model.embed(batch, inputs), ref, atol=1e-3)


def test_dynamic_mpnn_message_gathers_source_states_not_target_features():
    """DynamicMPNN's PhiPair gets S source states and D target features (different tensors, different sizes):
    edge_mlp's message equals message(cat([h_src[src_local], e])) (control: reading the targets' features instead
    of the sources' states gives another output)."""
    from dng_tgn.baselines import DynamicMPNN
    from dng_tgn.nn.paths import ExecutionPath
    from dng_tgn.nn.segment import segment_sum

    data, _, _ = _tiny_data()
    batch, inputs, _ = data.batch(torch.arange(3))
    torch.manual_seed(0)
    model = DynamicMPNN(hidden_dim=8, num_layers=3, fourier_size=2)

    def reference(wrong: bool = False):
        v0 = model.initial_nodes(batch, inputs)
        s = v0
        for t, step in enumerate(batch.steps, start=1):
            e, phi = model.edge_enc(step.weight), model.phi(t - 1)
            h_src, h_dst = s[step.src_nodes], v0[step.dst_nodes]
            msg_in = h_dst[step.dst_local] if wrong else h_src[step.src_local]
            m = phi.message(torch.cat([msg_in, e], dim=1))
            agg = segment_sum(m, step.src_local, step.dst_local, h_src.shape[0], h_dst.shape[0], ExecutionPath.TORCH)
            s = s.index_copy(0, step.dst_nodes, phi.update(torch.cat([agg, h_dst], dim=1)))
        return s

    assert any(st.src_nodes.numel() != st.dst_nodes.numel() for st in batch.steps)  # S != D somewhere
    fast = model.embed(batch, inputs)
    assert torch.allclose(fast, reference(), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(fast, reference(wrong=True), atol=1e-3)
