"""dng_tgn.tracking against a real MongoDB wire-protocol server (SecantusDB).

Each test runs a tiny Sacred experiment and reads back what it logged:
with pymongo from the server, and from the file-storage directory on disk.
"""

from __future__ import annotations

import json
import uuid
import warnings

import gridfs
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pymongo  # noqa: E402
import pytest  # noqa: E402

from dng_tgn import tracking  # noqa: E402
from dng_tgn.tracking import MongoUnreachableWarning, make_experiment  # noqa: E402
from sacred.observers import MongoObserver  # noqa: E402  (after dng_tgn.tracking, which silences Sacred's pkg_resources warning)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LOSSES = [1.0, 0.5, 0.25]


@pytest.fixture(autouse=True)
def isolated_env(runs_root):
    return runs_root


def tiny_experiment(name: str, **kwargs):
    """Three logged losses, a numpy scalar in the config scope and a figure artifact."""
    ex = make_experiment(name, save_git_info=False, **kwargs)

    @ex.config
    def config():
        lr = 0.1
        width = np.int64(8)  # noqa: F841 -- Sacred reads config-scope locals

    @ex.main
    def main(_run, lr, width):
        for step, loss in enumerate(LOSSES):
            _run.log_scalar("train.loss", np.float32(loss), step)
        fig, ax = plt.subplots()
        ax.plot(LOSSES)
        tracking.log_figure(_run, fig, "loss_curve", close=True)
        return lr * width

    return ex


def unique_db() -> str:
    return f"test_{uuid.uuid4().hex[:12]}"


def test_run_config_metrics_and_figure_reach_mongodb(mongo_server, isolated_env):
    db_name = unique_db()
    ex = tiny_experiment("tiny_mongo")
    with warnings.catch_warnings():
        warnings.simplefilter("error", MongoUnreachableWarning)
        run = ex.run(
            config_updates={"lr": np.float32(0.5)},  # raw MongoObserver fails on this
            options={"--mongo": f"{mongo_server}/{db_name}"},
        )
    assert run.status == "COMPLETED"
    (observer,) = [o for o in run.observers if isinstance(o, MongoObserver)]
    assert type(observer) is tracking._ResilientMongoObserver  # never the Queued variant, which can hang
    assert observer.failure_dir == str(isolated_env / "tiny_mongo" / tracking.MONGO_FAILURE_SUBDIR)

    client = pymongo.MongoClient(mongo_server, serverSelectionTimeoutMS=2000)
    try:
        db = client[db_name]
        doc = db.runs.find_one({"_id": run._id})
        assert doc is not None, f"run {run._id} not in {db_name}.runs"
        assert doc["status"] == "COMPLETED"
        assert doc["experiment"]["name"] == "tiny_mongo"
        assert doc["config"]["lr"] == 0.5 and type(doc["config"]["lr"]) is float
        assert doc["config"]["width"] == 8 and type(doc["config"]["width"]) is int
        assert doc["meta"]["config_updates"] == {"lr": 0.5}
        assert doc["result"] == pytest.approx(4.0)

        metric = db.metrics.find_one({"run_id": run._id, "name": "train.loss"})
        assert metric is not None
        assert metric["steps"] == [0, 1, 2]
        assert metric["values"] == pytest.approx(LOSSES)

        artifacts = {a["name"]: a["file_id"] for a in doc["artifacts"]}
        assert set(artifacts) == {"loss_curve.png"}
        data = gridfs.GridFS(db).get(artifacts["loss_curve.png"]).read()
    finally:
        client.close()
    assert data.startswith(PNG_SIGNATURE)
    # File storage ran alongside, under the same run id, with the same bytes.
    run_dir = isolated_env / "tiny_mongo" / str(run._id)
    assert (run_dir / "loss_curve.png").read_bytes() == data
    assert json.loads((run_dir / "config.json").read_text())["lr"] == 0.5


def test_cli_mongo_option_overrides_env(mongo_server, unreachable_mongo_url, monkeypatch):
    db_name = unique_db()
    monkeypatch.setenv(tracking.ENV_MONGO_URL, unreachable_mongo_url)
    ex = tiny_experiment("tiny_cli")
    with warnings.catch_warnings():
        warnings.simplefilter("error", MongoUnreachableWarning)  # the env URL must not be tried
        run = ex.run_commandline(["tiny_cli", "--mongo", f"{mongo_server}/{db_name}", "with", "lr=0.25"])
    assert run.status == "COMPLETED"
    client = pymongo.MongoClient(mongo_server, serverSelectionTimeoutMS=2000)
    try:
        doc = client[db_name].runs.find_one({"_id": run._id})
    finally:
        client.close()
    assert doc["status"] == "COMPLETED"
    assert doc["config"]["lr"] == 0.25


def test_unreachable_server_warns_and_logs_to_file_storage(unreachable_mongo_url, isolated_env, monkeypatch):
    monkeypatch.setenv(tracking.ENV_MONGO_URL, unreachable_mongo_url)
    ex = tiny_experiment("tiny_offline")
    with pytest.warns(MongoUnreachableWarning, match="unreachable"):
        run = ex.run(config_updates={"lr": np.float64(0.5)})
    assert run.status == "COMPLETED"
    assert not any(isinstance(o, MongoObserver) for o in run.observers)

    run_dir = isolated_env / "tiny_offline" / str(run._id)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train.loss"]["steps"] == [0, 1, 2]
    assert metrics["train.loss"]["values"] == pytest.approx(LOSSES)
    assert json.loads((run_dir / "run.json").read_text())["status"] == "COMPLETED"
    assert (run_dir / "loss_curve.png").read_bytes().startswith(PNG_SIGNATURE)


def test_mongo_run_id_may_collide_with_existing_run_dir(mongo_server, isolated_env):
    # File-only runs already used directory 1; a fresh database also hands out id 1.
    (isolated_env / "tiny_collide" / "1").mkdir(parents=True)
    ex = tiny_experiment("tiny_collide", mongo_url=f"{mongo_server}/{unique_db()}")
    run = ex.run()
    assert run.status == "COMPLETED"
    assert run._id == 1
    assert (isolated_env / "tiny_collide" / "1_2" / "metrics.json").exists()


def test_unobserved_run_touches_neither_server_nor_disk(unreachable_mongo_url, isolated_env):
    ex = tiny_experiment("tiny_unobserved", mongo_url=unreachable_mongo_url)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MongoUnreachableWarning)
        run = ex.run(options={"--unobserved": True})
    assert run.status == "COMPLETED"
    assert not (isolated_env / "tiny_unobserved").exists()


def test_url_precedence_and_validation(monkeypatch):
    ex = make_experiment("tiny_precedence", mongo_url="mongodb://127.0.0.1:1/arg", save_git_info=False)
    monkeypatch.setenv(tracking.ENV_MONGO_URL, "mongodb://127.0.0.1:1/env")
    assert ex.resolve_mongo_url({"--mongo": "mongodb://127.0.0.1:1/cli"}).endswith("/cli")
    assert ex.resolve_mongo_url({"--mongo": None}).endswith("/arg")
    assert make_experiment("tiny_env", save_git_info=False).resolve_mongo_url().endswith("/env")
    with pytest.raises(ValueError, match="mongodb://"):
        make_experiment("tiny_bad", mongo_url="127.0.0.1:27017:db")  # Sacred -m syntax


def test_to_python_and_redaction():
    converted = tracking.to_python({"a": np.float32(0.5), "b": [np.int64(3), (np.bool_(True),)], "c": np.array(2.0)})
    assert converted == {"a": 0.5, "b": [3, (True,)], "c": 2.0}
    assert [type(v) for v in (converted["a"], converted["b"][0], converted["b"][1][0], converted["c"])] == [
        float, int, bool, float,
    ]
    assert tracking._redact("mongodb://me:secret@db.example:27017/x") == "mongodb://me:***@db.example:27017/x"
    assert tracking._redact("mongodb://127.0.0.1:27017/x") == "mongodb://127.0.0.1:27017/x"


def test_experiment_records_its_own_module_as_source():
    ex = make_experiment("tiny_source", save_git_info=False)
    assert ex.mainfile is not None and ex.mainfile.filename == __file__
    assert ex.doc == __doc__
