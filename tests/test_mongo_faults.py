"""MongoDB faults against a real server process (SecantusDB) that the test starts and kills.

* unreachable at start: a warning within 5 s, the run goes on with file storage;
* killed mid-run: the run finishes with at most 5 s extra, its local record is complete, and the failure
  record written for MongoDB holds the metrics too;
* a run killed with SIGKILL leaves a RUNNING document: the next run against that database (and
  ``python -m dng_tgn.tracking fix-stale``) marks it INTERRUPTED once its heartbeat is stale, and a run that
  resumes it links both records.
"""
from __future__ import annotations

import glob
import importlib.util
import json
import os
import pickle
import signal
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path

import pymongo
import pytest

from dng_tgn import tracking
from dng_tgn.faults import kill_point
from dng_tgn.tracking import MongoUnreachableWarning, make_experiment
from dng_tgn.training import flush_run

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import LOOPBACK, _free_port, _secantus_command, _wait_until_pingable  # noqa: E402
from test_resume_faults import killed  # noqa: E402

pytestmark = pytest.mark.skipif(importlib.util.find_spec("secantus") is None, reason="secantusdb is not installed")


@pytest.fixture
def server(tmp_path):
    """A SecantusDB process of this test alone: (url, process); the test may kill it."""
    port = _free_port()
    url = f"mongodb://{LOOPBACK}:{port}"
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(_secantus_command(port, tmp_path / "data"), stdin=subprocess.DEVNULL,
                                stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        _wait_until_pingable(url, proc, log_path)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(autouse=True)
def isolated(runs_root):
    return runs_root


def loop_experiment(name: str, steps: int = 12, on_step=None, pause: float = 0.05):
    """Logs a metric per step and flushes it (as the training loop does at checkpoints)."""
    ex = make_experiment(name, save_git_info=False)

    @ex.config
    def config():
        runtime = dict(resume=None)  # noqa: F841

    @ex.main
    def main(_run):
        for step in range(1, steps + 1):
            _run.log_scalar("train.loss", 1.0 / step, step)
            if on_step is not None:
                on_step(step)
            flush_run(_run)
            kill_point(f"flushed/{step}")
            time.sleep(pause)
        return {"final": 1.0 / steps}

    return ex


def mongo_doc(url: str, db: str, run_id):
    client = pymongo.MongoClient(url, serverSelectionTimeoutMS=3000)
    try:
        return client[db].runs.find_one({"_id": run_id})
    finally:
        client.close()


def test_unreachable_server_warns_within_5_s_and_the_run_goes_on(unreachable_mongo_url, isolated):
    ex = loop_experiment("mongo_down_at_start", steps=3, pause=0)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = ex.run(options={"--mongo": unreachable_mongo_url, "--capture": "no"})
    elapsed = time.perf_counter() - t0
    assert any(issubclass(w.category, MongoUnreachableWarning) for w in caught)
    assert elapsed < 5.0, f"the run took {elapsed:.1f}s with an unreachable server"
    assert run.status == "COMPLETED"
    d = Path(next(o.dir for o in run.observers if getattr(o, 'dir', None)))
    assert json.loads((d / "metrics.json").read_text())["train.loss"]["steps"] == [1, 2, 3]


def test_server_killed_mid_run_costs_at_most_5_s(server, isolated):
    url, proc = server
    db = f"t_{uuid.uuid4().hex[:10]}"
    steps = 12
    baseline_ex = loop_experiment("mongo_alive", steps=steps)
    t0 = time.perf_counter()
    baseline = baseline_ex.run(options={"--mongo": f"{url}/{db}", "--capture": "no"})
    baseline_s = time.perf_counter() - t0
    assert mongo_doc(url, db, baseline._id)["status"] == "COMPLETED"

    def kill_server(step):
        if step == 4:
            proc.send_signal(signal.SIGKILL)
            proc.wait()

    ex = loop_experiment("mongo_killed", steps=steps, on_step=kill_server)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = ex.run(options={"--mongo": f"{url}/{db}", "--capture": "no"})
    extra = time.perf_counter() - t0 - baseline_s
    assert run.status == "COMPLETED"
    assert extra <= 5.0, f"a dead server cost the run {extra:.1f}s"
    assert any("stopped answering" in str(w.message) for w in caught)
    d = Path(next(o.dir for o in run.observers if getattr(o, 'dir', None)))
    # the local record is complete
    assert json.loads((d / "metrics.json").read_text())["train.loss"]["steps"] == list(range(1, steps + 1))
    assert json.loads((d / "run.json").read_text())["status"] == "COMPLETED"
    # and MongoDB's failure record holds the run with its metrics
    (failed,) = glob.glob(str(isolated / "mongo_killed" / tracking.MONGO_FAILURE_SUBDIR / "*.pickle"))
    with open(failed, "rb") as f:
        record = pickle.load(f)
    assert record["status"] == "COMPLETED" and record["_id"] == run._id
    assert record["metrics"]["train.loss"]["steps"] == list(range(1, steps + 1))
    print(f"baseline {baseline_s:.2f}s, extra with the server killed {extra:.2f}s")


def test_killed_runs_are_marked_interrupted_and_linked(server, isolated, monkeypatch):
    url, _ = server
    db = f"t_{uuid.uuid4().hex[:10]}"
    mongo = f"{url}/{db}"
    ex = loop_experiment("mongo_stale", steps=6)

    # a run SIGKILLed at step 3 (after its flush): its document stays RUNNING
    ex_k = loop_experiment("mongo_stale", steps=6)
    killed(lambda: ex_k.run(options={"--mongo": mongo, "--capture": "no"}), "flushed/3")
    client = pymongo.MongoClient(url, serverSelectionTimeoutMS=3000)
    try:
        (first,) = list(client[db].runs.find({}))
        assert first["status"] == "RUNNING"
        # the killed run's metrics up to its last flush are in MongoDB
        assert client[db].metrics.find_one({"run_id": first["_id"], "name": "train.loss"})["steps"][:3] == [1, 2, 3]
        # the next run against the database marks it INTERRUPTED once its heartbeat is stale
        monkeypatch.setenv(tracking.ENV_STALE_AFTER_S, "0.5")
        time.sleep(1.0)
        nxt = ex.run(options={"--mongo": mongo, "--capture": "no"})
        doc = client[db].runs.find_one({"_id": first["_id"]})
        assert doc["status"] == "INTERRUPTED" and "no heartbeat since" in doc["stale"]["reason"]
        assert client[db].runs.find_one({"_id": nxt._id})["status"] == "COMPLETED"  # a live run is never touched

        # the fix-stale command does the same, for MongoDB and file storage
        killed(lambda: ex_k.run(options={"--mongo": mongo, "--capture": "no"}), "flushed/3")
        second = max(client[db].runs.find({}), key=lambda d: d["_id"])
        assert second["status"] == "RUNNING"
        time.sleep(1.0)
        assert tracking.main(["fix-stale", "--mongo", mongo, "--runs-dir", str(isolated), "--older-than", "0.5"]) == 0
        assert client[db].runs.find_one({"_id": second["_id"]})["status"] == "INTERRUPTED"
        second_dir = next(p for p in (isolated / "mongo_stale").iterdir()
                          if p.name.split("_")[0] == str(second["_id"]))
        assert json.loads((second_dir / "run.json").read_text())["status"] == "INTERRUPTED"

        # a run that resumes a killed one links both records, in files and in MongoDB
        killed(lambda: ex_k.run(options={"--mongo": mongo, "--capture": "no"}), "flushed/3")
        third = max(client[db].runs.find({}), key=lambda d: d["_id"])
        third_dir = next(p for p in (isolated / "mongo_stale").iterdir() if p.name.split("_")[0] == str(third["_id"]))
        monkeypatch.setenv(tracking.ENV_STALE_AFTER_S, "3600")  # the resume itself must do the marking
        resumed = ex.run(config_updates={"runtime": {"resume": str(third_dir)}},
                         options={"--mongo": mongo, "--capture": "no"})
        old = client[db].runs.find_one({"_id": third["_id"]})
        new = client[db].runs.find_one({"_id": resumed._id})
        assert old["status"] == "INTERRUPTED" and old["resumed_by"]["id"] == resumed._id
        assert new["info"]["resumed_from"]["mongo"] == {"db": db, "id": third["_id"]}
        assert json.loads((third_dir / "run.json").read_text())["resumed_by"]["id"] == resumed._id
    finally:
        client.close()
