"""experiments/static_vs_dynamic.py (§7) end to end at the ``tiny`` config: metrics, PNG, MongoDB."""
from __future__ import annotations

import json
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


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def isolated_env(runs_root):
    return runs_root / "static_vs_dynamic"


def read_metrics(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


def check_on_disk(run_dir):
    metrics = read_metrics(run_dir)
    info = json.loads((run_dir / "info.json").read_text())
    for name in ("static", "dynamic"):
        assert len(metrics[f"{name}.train.loss"]["values"]) == 2  # tiny: 2 epochs
        assert metrics[f"{name}.test.mse.layer3"]["steps"] == [1, 2]
        for layer in (1, 2, 3):
            v = info["results"][name]["test_mse"][str(layer)]
            assert v > 0 and v == v  # finite, positive MSE
    # constants (model sizes) and single final values are info / result, never metrics
    assert not [k for k in metrics if k.endswith(".params") or ".final." in k]
    assert (run_dir / PNG_NAME).read_bytes().startswith(PNG_SIGNATURE)
    assert set(info["results"]) == {"static", "dynamic"}
    assert info["params"]["static"] > 0 and info["params"]["dynamic"] == info["results"]["dynamic"]["params"]



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
    assert set(run.result) == {"static", "dynamic"}
    for r in run.result.values():
        assert set(r["test_mse"]) == {"1", "2", "3"}
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
        assert set(doc["info"]["results"]) == {"static", "dynamic"}
        for name in ("static", "dynamic"):
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
    assert "\r" not in cout and "static: 2/2 epoch (100%)" in cout
    assert "Result: {" not in cout  # the raw result dict is in run.json; the summary says it readably
    assert cout.rstrip().splitlines()[-1].startswith("params ")  # the summary is the last thing
    assert json.loads((run_dir / "run.json").read_text())["status"] == "COMPLETED"
