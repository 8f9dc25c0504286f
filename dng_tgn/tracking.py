"""Sacred + MongoDB plumbing shared by every dng_tgn experiment.

Every experiment module builds its Sacred experiment with :func:`make_experiment`
instead of ``sacred.Experiment``.  The observers are decided once per run, so
that importing an experiment module never touches the network or the disk:

* A ``FileStorageObserver`` is always attached, writing to
  ``$DNG_RUNS_DIR/<name>`` (default ``runs/<name>``).  No server is needed.
* A ``MongoObserver`` is added when a MongoDB URL is given, in this order of
  precedence: the ``--mongo URL`` command-line option, the ``mongo_url``
  argument of :func:`make_experiment`, the ``DNG_MONGO_URL`` environment
  variable.  The server is pinged first with a short timeout; if it cannot be
  reached a :class:`MongoUnreachableWarning` is emitted and the run goes on
  with file storage only.

Why not Sacred's own ``-m``/``--mongo_db`` flag: it only understands
``[host:port:]db_name[.collection]`` and fails on ``mongodb://`` URLs (so no
credentials, replica sets, TLS or ``mongodb+srv``), and it leaves
``failure_dir`` unset.  ``--mongo`` takes any MongoDB connection string; the
database is the URL's path (``mongodb://host:27017/mydb``), else ``dng_tgn``.

Other rules this module enforces, each from a failure seen in practice:

* ``MongoObserver.failure_dir`` is always set (``<runs dir>/_mongo_failed``),
  so a run whose final save fails is pickled there instead of being lost.
* Numpy scalars in config updates (``ex.run(config_updates={"lr": np.float32(.1)})``)
  make MongoObserver fail with ``InvalidDocument``; they are converted to
  plain Python numbers before the run is created.
* ``QueuedMongoObserver`` is never used: its background thread can wait
  forever for a server that went away, so the process never exits.
* File storage never fails a run whose Mongo-assigned id names an existing
  run directory (left by file-only runs); the directory gets a suffix.
* The observer's client gives up server selection after a few seconds rather
  than pymongo's 30 s, because Sacred retries its final save up to 10 times.

Usage in an experiment module (run as ``python -m experiments.foo with lr=0.01``,
optionally ``--mongo mongodb://127.0.0.1:27017/dng_tgn``)::

    from dng_tgn.device import default_device
    from dng_tgn.tracking import make_experiment, log_figure

    ex = make_experiment("foo")

    @ex.config
    def config():
        lr = 1e-3

    @ex.automain
    def main(_run, lr):
        dev = default_device()
        ...
        _run.log_scalar("train.loss", loss, step)
        log_figure(_run, fig, "loss_curve.png")
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import pickle
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from . import distributed as _dist

# Sacred 0.8.7's sacred/dependencies.py does `import pkg_resources`, which setuptools deprecates with a
# UserWarning on import. The fix belongs in Sacred (there is no newer release); it is not the user's to act on,
# so it is filtered here, for this import only. experiments/__init__.py does the same for the experiments.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    from sacred import Experiment
    from sacred.commandline_options import cli_option
    from sacred.dependencies import gather_sources_and_dependencies
    from sacred.observers import FileStorageObserver, MongoObserver

__all__ = [
    "ENV_MONGO_URL",
    "ENV_RUNS_DIR",
    "DEFAULT_DB_NAME",
    "MongoUnreachableWarning",
    "TrackedExperiment",
    "make_experiment",
    "runs_dir",
    "mongo_observer",
    "ping_mongo",
    "to_python",
    "log_figure",
    "flush_run",
    "print_summary",
    "link_resume",
    "mark_stale_runs",
    "fix_stale",
]

ENV_MONGO_URL = "DNG_MONGO_URL"
ENV_RUNS_DIR = "DNG_RUNS_DIR"
DEFAULT_DB_NAME = "dng_tgn"
DEFAULT_RUNS_DIR = "runs"
PING_TIMEOUT_S = 1.5
# The observer's own client: server selection and connecting give up after 2 s (pymongo's default is 30 s, and
# Sacred retries its final save up to 10 times): a server that dies mid-run costs the run at most one such wait,
# after which the observer stops talking to it (see _ResilientMongoObserver).
OBSERVER_TIMEOUT_MS = 2000
OBSERVER_SOCKET_TIMEOUT_MS = 5000
MONGO_FAILURE_SUBDIR = "_mongo_failed"
# A RUNNING record whose heartbeat (every 10 s while the run lives, and at every checkpoint) is older than this
# belongs to a run that was killed; mark_stale_runs marks it INTERRUPTED. $DNG_STALE_AFTER_S overrides.
STALE_AFTER_S = 120.0
ENV_STALE_AFTER_S = "DNG_STALE_AFTER_S"

log = logging.getLogger(__name__)


class MongoUnreachableWarning(UserWarning):
    """A MongoDB URL was configured but the server did not answer a ping."""


# --------------------------------------------------------------------------- helpers


def to_python(obj: Any) -> Any:
    """Return ``obj`` with numpy scalars (and 0-d arrays) turned into Python numbers.

    Recurses into dicts, lists and tuples; everything else is returned as is.
    BSON cannot encode ``np.float32``/``np.int64``, so anything headed for
    MongoDB (config, ``_run.info``, results) should pass through here.
    """
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray) and obj.ndim == 0:
        return obj.item()
    if isinstance(obj, Mapping):
        return {key: to_python(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_python(value) for value in obj)
    return obj


def runs_dir(name: str, base: Optional[os.PathLike | str] = None) -> Path:
    """File-storage directory of experiment ``name``: ``<base>/<name>``.

    ``base`` defaults to ``$DNG_RUNS_DIR``, else ``runs`` (relative to the cwd).
    """
    base = base if base is not None else os.environ.get(ENV_RUNS_DIR) or DEFAULT_RUNS_DIR
    return Path(base) / name


def _redact(url: str) -> str:
    """``url`` with any password replaced, safe for logs and run documents."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    credentials, host = rest.split("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def _check_url(url: str) -> None:
    if not url.startswith(("mongodb://", "mongodb+srv://")):
        raise ValueError(
            f"MongoDB URL must start with 'mongodb://' or 'mongodb+srv://', got {_redact(url)!r}; "
            "e.g. --mongo mongodb://127.0.0.1:27017/dng_tgn"
        )


def _db_name_from_url(url: str) -> Optional[str]:
    from pymongo.uri_parser import parse_uri

    return parse_uri(url).get("database")


def ping_mongo(url: str, timeout_s: float = PING_TIMEOUT_S) -> Optional[str]:
    """Ping the server at ``url``; return ``None`` if it answered, else the error text.

    Raises ``ValueError`` for a malformed URL: that is a configuration mistake
    to fix, not a server that happens to be down.
    """
    import pymongo
    from pymongo.errors import ConfigurationError, InvalidURI, PyMongoError

    _check_url(url)
    timeout_ms = int(timeout_s * 1000)
    try:
        client = pymongo.MongoClient(
            url,
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms,
            socketTimeoutMS=timeout_ms,
        )
    except (InvalidURI, ConfigurationError) as exc:
        raise ValueError(f"invalid MongoDB URL {_redact(url)!r}: {exc}") from exc
    try:
        client.admin.command("ping")
        return None
    except PyMongoError as exc:
        # pymongo appends a long topology dump after ", Timeout:"; the cause comes first.
        reason = str(exc).split(", Timeout:")[0]
        return f"{type(exc).__name__}: {reason[:300]}"
    finally:
        client.close()


def mongo_observer(
    url: str,
    failure_dir: os.PathLike | str,
    db_name: Optional[str] = None,
    timeout_s: float = PING_TIMEOUT_S,
) -> Optional[MongoObserver]:
    """A ``MongoObserver`` for ``url``, or ``None`` (with a warning) if the server is unreachable.

    ``db_name`` defaults to the URL's path, else :data:`DEFAULT_DB_NAME`.
    """
    error = ping_mongo(url, timeout_s)
    if error is not None:
        warnings.warn(
            f"MongoDB at {_redact(url)} is unreachable ({error}); "
            "logging to file storage only.",
            MongoUnreachableWarning,
            stacklevel=2,
        )
        return None
    db_name = db_name or _db_name_from_url(url) or DEFAULT_DB_NAME
    log.info("logging to MongoDB %s, database %r", _redact(url), db_name)
    observer = _ResilientMongoObserver(
        url=url,
        db_name=db_name,
        failure_dir=str(failure_dir),
        serverSelectionTimeoutMS=OBSERVER_TIMEOUT_MS,
        connectTimeoutMS=OBSERVER_TIMEOUT_MS,
        socketTimeoutMS=OBSERVER_SOCKET_TIMEOUT_MS,
    )
    observer.redacted_url = _redact(url)
    try:  # runs killed earlier must not stay RUNNING for good
        marked = mark_stale_runs(observer.runs.database)
        if marked:
            log.warning("marked %d stale RUNNING run(s) in %r as INTERRUPTED: %s", len(marked), db_name, marked)
    except Exception as exc:  # never fail a run over housekeeping
        log.warning("could not check %r for stale runs: %s", db_name, exc)
    return observer


def _stale_after_s(older_than_s: Optional[float]) -> float:
    if older_than_s is not None:
        return float(older_than_s)
    return float(os.environ.get(ENV_STALE_AFTER_S) or STALE_AFTER_S)


def mark_stale_runs(db, older_than_s: Optional[float] = None) -> list:
    """Mark RUNNING runs of MongoDB database ``db`` whose last heartbeat is older than ``older_than_s`` as
    INTERRUPTED (a killed process never says it stopped); returns their ids.

    A run that never sent a heartbeat counts from its start time. Default: ``$DNG_STALE_AFTER_S``, else 120 s.
    """
    cutoff = datetime.datetime.utcnow() - datetime.timedelta(seconds=_stale_after_s(older_than_s))
    now = datetime.datetime.utcnow()
    marked = []
    for doc in db.runs.find({"status": "RUNNING"}, {"_id": 1, "heartbeat": 1, "start_time": 1}):
        last = doc.get("heartbeat") or doc.get("start_time")
        if isinstance(last, datetime.datetime) and last.tzinfo is not None:
            last = last.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        if last is None or last < cutoff:
            db.runs.update_one({"_id": doc["_id"], "status": "RUNNING"},
                               {"$set": {"status": "INTERRUPTED", "stop_time": last or now,
                                         "stale": {"marked_at": now, "reason": "no heartbeat since "
                                                   + (last.isoformat() if last else "start")}}})
            marked.append(doc["_id"])
    return marked


def _mark_stale_file_runs(base: Path, older_than_s: float) -> list[str]:
    cutoff = datetime.datetime.utcnow() - datetime.timedelta(seconds=older_than_s)
    marked = []
    for run_json in sorted(Path(base).glob("**/run.json")):
        try:
            entry = json.loads(run_json.read_text())
        except (OSError, ValueError):
            continue
        if entry.get("status") != "RUNNING":
            continue
        last = entry.get("heartbeat") or entry.get("start_time")
        try:
            last_dt = datetime.datetime.fromisoformat(last) if last else None
        except ValueError:
            last_dt = None
        if last_dt is None or last_dt < cutoff:
            entry.update(status="INTERRUPTED", stop_time=last or datetime.datetime.utcnow().isoformat(),
                         stale={"marked_at": datetime.datetime.utcnow().isoformat(),
                                "reason": f"no heartbeat since {last or 'start'}"})
            _atomic_json(entry, run_json)
            marked.append(str(run_json.parent))
    return marked


def fix_stale(mongo_url: Optional[str] = None, runs_base: Optional[os.PathLike | str] = None,
              older_than_s: Optional[float] = None) -> dict:
    """Mark stale RUNNING records INTERRUPTED: in MongoDB at ``mongo_url`` and/or the file storage under
    ``runs_base``. Returns ``{"mongo": [ids], "files": [dirs]}``. Command line: ``python -m dng_tgn.tracking
    fix-stale --mongo URL --runs-dir runs``."""
    older = _stale_after_s(older_than_s)
    out = {"mongo": [], "files": []}
    if mongo_url:
        import pymongo

        _check_url(mongo_url)
        client = pymongo.MongoClient(mongo_url, serverSelectionTimeoutMS=int(PING_TIMEOUT_S * 1000) * 2)
        try:
            db = client[_db_name_from_url(mongo_url) or DEFAULT_DB_NAME]
            out["mongo"] = mark_stale_runs(db, older)
        finally:
            client.close()
    if runs_base is not None:
        out["files"] = _mark_stale_file_runs(Path(runs_base), older)
    return out


class _ResilientMongoObserver(MongoObserver):
    """``MongoObserver`` that survives its server going away.

    Stock Sacred keeps retrying a dead server: every heartbeat blocks for the selection timeout, and the final
    save is tried 10 times (~60 s with a 5 s timeout) before the run may exit; the pickled failure record it then
    writes has no metrics, which live in a separate collection. Here the first connection failure marks the
    server dead: later calls return at once, and the final record (``<runs dir>/_mongo_failed``) holds the run
    document *and* every metric logged (``metrics``). The file-storage record is unaffected either way.
    """

    dead: bool = False
    redacted_url: str = ""

    def _init_local(self):
        if not hasattr(self, "local_metrics"):
            self.local_metrics = {}

    def _die(self, exc) -> None:
        if not self.dead:
            self.dead = True
            reason = str(exc).split(", Timeout:")[0][:200]
            warnings.warn(f"MongoDB {self.redacted_url} stopped answering ({type(exc).__name__}: {reason}); "
                          f"the run goes on with file storage only", MongoUnreachableWarning, stacklevel=3)

    def _guarded(self, fn, *args, **kwargs):
        import pymongo.errors

        if self.dead:
            return None
        try:
            return fn(*args, **kwargs)
        except pymongo.errors.ConnectionFailure as exc:  # AutoReconnect, ServerSelectionTimeoutError, ...
            self._die(exc)
            return None

    def started_event(self, ex_info, command, host_info, start_time, config, meta_info, _id):
        import pymongo.errors

        try:
            return super().started_event(ex_info, command, host_info, start_time, config, meta_info, _id)
        except pymongo.errors.ConnectionFailure as exc:  # answered the ping, then went away: go on without it
            self._die(exc)
            return _id

    def save(self):
        import pymongo.errors
        from sacred.observers.mongo import ObserverError

        if self.dead:
            return
        try:
            self.runs.update_one({"_id": self.run_entry["_id"]}, {"$set": self.run_entry})
        except pymongo.errors.ConnectionFailure as exc:
            self._die(exc)
        except pymongo.errors.InvalidDocument as exc:
            raise ObserverError("Run contained an unserializable entry (most likely in the info)") from exc

    def log_metrics(self, metrics_by_name, info):
        self._init_local()
        for key, m in metrics_by_name.items():
            local = self.local_metrics.setdefault(key, {"steps": [], "values": [], "timestamps": []})
            local["steps"] += list(m["steps"])
            local["values"] += list(m["values"])
            local["timestamps"] += [t.isoformat() if hasattr(t, "isoformat") else t for t in m["timestamps"]]
        self._guarded(super().log_metrics, metrics_by_name, info)

    def artifact_event(self, name, filename, metadata=None, content_type=None):
        self._guarded(super().artifact_event, name, filename, metadata, content_type)

    def resource_event(self, filename):
        self._guarded(super().resource_event, filename)

    def final_save(self, attempts):
        import pymongo.errors
        from sacred.observers.mongo import force_bson_encodeable

        if not self.dead:
            for _ in range(2):  # one try, plus one if the document needed cleaning
                try:
                    self.runs.update_one({"_id": self.run_entry["_id"]}, {"$set": self.run_entry}, upsert=True)
                    return
                except pymongo.errors.ConnectionFailure as exc:
                    self._die(exc)
                    break
                except pymongo.errors.InvalidDocument:
                    self.run_entry = force_bson_encodeable(self.run_entry)
        self._init_local()
        os.makedirs(self.failure_dir, exist_ok=True)
        record = dict(self.run_entry, metrics=self.local_metrics)
        with tempfile.NamedTemporaryFile(suffix=".pickle", delete=False, dir=self.failure_dir,
                                         prefix=f"sacred_mongo_fail_{self.run_entry['_id']}_") as f:
            pickle.dump(record, f)
        print(f"Warning: saving to MongoDB failed; the run record, with its metrics, is in {f.name}",
              file=sys.stderr)


_UMASK = os.umask(0o022)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


def _atomic_json(obj, path: Path) -> None:
    from sacred.serializer import flatten

    data = json.dumps(flatten(obj), sort_keys=True, indent=2, ensure_ascii=False).encode("utf-8")
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, _FILE_MODE)  # mkstemp's 0600 would make the run records unreadable to others
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class _FileStorage(FileStorageObserver):
    """``FileStorageObserver`` that never fails a run because its directory exists, and never leaves a
    half-written JSON file.

    With MongoDB attached, Sacred names the run after Mongo's run id, and a
    directory of that name may already exist from earlier file-only runs;
    stock Sacred then aborts the run with ``FileExistsError``.  Here the
    directory gets a suffix instead (``7_2``); run.json still holds the id.
    Sacred rewrites metrics.json / run.json / info.json in place; a run killed
    mid-write would leave them truncated, so here they are replaced atomically.
    """

    def save_json(self, obj, filename):
        _atomic_json(obj, Path(self.dir) / filename)

    def _make_run_dir(self, _id):
        if _id is None:
            return super()._make_run_dir(_id)
        os.makedirs(self.basedir, exist_ok=True)
        name, attempt = str(_id), 1
        while True:
            try:
                self._make_dir(name)
                return
            except FileExistsError:
                attempt += 1
                name = f"{_id}_{attempt}"


@cli_option("-M", "--mongo")
def mongo_option(args, run):
    """Log to MongoDB at this URL, e.g. mongodb://127.0.0.1:27017/dng_tgn.

    Overrides $DNG_MONGO_URL. If the server is unreachable the run warns and
    logs to file storage only.
    """
    # Deliberately empty: TrackedExperiment._create_run reads the option so
    # that the URL, the argument and the environment variable share one path.


# --------------------------------------------------------------------------- experiment


def _drop_no_observers_warning(record: logging.LogRecord) -> bool:
    return "No observers have been added" not in str(record.msg)


class TrackedExperiment(Experiment):
    """A ``sacred.Experiment`` that attaches dng_tgn's observers to every run.

    Build it with :func:`make_experiment`.  Observers are decided in
    :meth:`_create_run` (not at construction) so importing an experiment
    module stays free of I/O, runs never accumulate observers, and
    unobserved commands (``print_config``, ``-u``) never ping a server.
    """

    def __init__(
        self,
        name: str,
        *,
        mongo_url: Optional[str] = None,
        runs_base: Optional[os.PathLike | str] = None,
        db_name: Optional[str] = None,
        caller_globals: Optional[dict] = None,
        **sacred_kwargs: Any,
    ):
        if caller_globals is None:
            caller_globals = sys._getframe(1).f_globals
        options = list(sacred_kwargs.pop("additional_cli_options", None) or [])
        super().__init__(name, additional_cli_options=[mongo_option, *options], **sacred_kwargs)
        # Sacred records the sources of the module that called Experiment(),
        # which is this one; point it at the experiment's own module instead.
        base_dir = sacred_kwargs.get("base_dir") or os.path.dirname(caller_globals.get("__file__", "."))
        self.base_dir = os.path.abspath(base_dir)
        self.doc = caller_globals.get("__doc__", "")
        self.mainfile, self.sources, self.dependencies = gather_sources_and_dependencies(
            caller_globals, self.save_git_info, self.base_dir
        )
        if self.mainfile is None and not sacred_kwargs.get("interactive", False):
            raise RuntimeError(
                f"experiment {name!r} is not defined in a file, so its source cannot be "
                "saved; pass interactive=True to run it anyway"
            )
        if mongo_url is not None:
            _check_url(mongo_url)
        self.mongo_url = mongo_url
        self.runs_base = runs_base
        self.db_name = db_name

    def resolve_mongo_url(self, options: Optional[Mapping[str, Any]] = None) -> Optional[str]:
        """The URL a run would log to: ``--mongo``, else ``mongo_url``, else ``$DNG_MONGO_URL``."""
        cli_url = (options or {}).get(mongo_option.get_flag())
        return cli_url or self.mongo_url or os.environ.get(ENV_MONGO_URL) or None

    def _create_run(self, command_name=None, config_updates=None, named_configs=(), info=None, meta_info=None, options=None):
        run = super()._create_run(
            command_name=command_name,
            config_updates=to_python(config_updates) if config_updates else config_updates,
            named_configs=named_configs,
            info=info,
            meta_info=meta_info,
            options=options,
        )
        run.config = to_python(run.config)
        url = self.resolve_mongo_url(options)
        flag = mongo_option.get_flag()
        if url and isinstance(run.meta_info.get("options"), dict) and run.meta_info["options"].get(flag):
            run.meta_info["options"][flag] = _redact(url)  # never store a password in the run
        # under torchrun every process runs the experiment; they join the process group here (before any rank
        # could write) and only rank 0 gets observers, so the run directory, MongoDB record, checkpoints and
        # artifacts are written once
        runtime = run.config.get("runtime") if isinstance(run.config, dict) else None
        _dist.init_from_env((runtime or {}).get("device") if isinstance(runtime, dict) else None)
        if not _dist.is_main():
            # Sacred warns about a run without observers; on a rank > 0 that is the design, not news
            run.run_logger.addFilter(_drop_no_observers_warning)  # one function: adding it twice is a no-op
            return run
        if run.unobserved:
            return run
        directory = runs_dir(self.path, self.runs_base)
        run.observers.append(_FileStorage(directory))
        if url:
            observer = mongo_observer(url, directory / MONGO_FAILURE_SUBDIR, db_name=self.db_name)
            if observer is not None:
                run.observers.append(observer)
        _instrument_run(run)
        return run


def make_experiment(
    name: str,
    *,
    mongo_url: Optional[str] = None,
    runs_base: Optional[os.PathLike | str] = None,
    db_name: Optional[str] = None,
    **sacred_kwargs: Any,
) -> TrackedExperiment:
    """Create the Sacred experiment ``name`` with dng_tgn's observers.

    Parameters
    ----------
    name:
        Experiment name; also the file-storage subdirectory.
    mongo_url:
        MongoDB connection string, used unless ``--mongo`` is given on the
        command line; ``None`` falls back to ``$DNG_MONGO_URL``.
    runs_base:
        Parent of the file-storage directory; ``None`` means ``$DNG_RUNS_DIR``
        or ``runs``.
    db_name:
        MongoDB database; ``None`` means the URL's path, else ``dng_tgn``.
    sacred_kwargs:
        Passed to ``sacred.Experiment`` (``ingredients``, ``interactive``,
        ``save_git_info``, ...).
    """
    return TrackedExperiment(
        name,
        mongo_url=mongo_url,
        runs_base=runs_base,
        db_name=db_name,
        caller_globals=sys._getframe(1).f_globals,
        **sacred_kwargs,
    )


# --------------------------------------------------------------------------- run instrumentation


class _SummaryLast(logging.Filter):
    """Keeps the task's final summary the last thing a run prints (and so the end of ``cout.txt``).

    Sacred logs ``Result: <the returned dict>`` and ``Completed after ...`` after the main function returns.
    When the task handed its summary to :func:`print_summary`, the raw ``Result:`` line is dropped (the summary
    says it readably; the dict is in run.json and MongoDB) and the summary is printed right after the
    ``Completed after`` line.
    """

    def __init__(self, run):
        super().__init__()
        self.run = run

    def filter(self, record: logging.LogRecord) -> bool:
        summary = getattr(self.run, "dng_summary", None)
        if summary is None:
            return True
        msg = str(record.msg)
        if msg.startswith("Result: "):
            return False
        if msg.startswith("Completed after"):
            sys.stdout.write(f"Completed after {record.args[0] if record.args else ''}\n{summary}\n")
            sys.stdout.flush()
            logging.getLogger(record.name).removeFilter(self)
            return False
        return True


def _instrument_run(run) -> None:
    """Locked heartbeats, ``run.dng_flush``, run ids in ``info``, resume links, summary-last logging."""
    lock = threading.RLock()
    emit = run._emit_heartbeat

    def locked_heartbeat():
        with lock:
            emit()

    def flush():
        if run.start_time is not None and run.status == "RUNNING" and run.observers:
            locked_heartbeat()

    run._emit_heartbeat = locked_heartbeat  # the heartbeat thread and checkpoint flushes take turns
    get_output = run._get_captured_output

    def get_captured_output():
        # Sacred drops what was printed after its last in-run read once the capture has closed (the text sits in
        # the capture's `final` and is never read), so the end of the output, e.g. the summary, never reached
        # cout.txt; read it here.
        out = getattr(run, "_output_file", None)
        if out is not None and out.closed and getattr(out, "final", None):
            text = out.get()
            if isinstance(text, bytes):
                text = text.decode("utf-8", "replace")
            text = (run.captured_out or "") + text
            run.captured_out = run.captured_out_filter(text) if run.captured_out_filter is not None else text
            return
        get_output()

    run._get_captured_output = get_captured_output
    run.dng_flush = flush
    logger = run.run_logger
    for f in [f for f in logger.filters if isinstance(f, _SummaryLast)]:
        logger.removeFilter(f)
    logger.addFilter(_SummaryLast(run))

    def record_ids():
        file_dir = next((o.dir for o in run.observers if isinstance(o, FileStorageObserver)), None)
        mongo = [o for o in run.observers if isinstance(o, MongoObserver)]
        run.info["run"] = to_python({
            "id": run._id, "dir": os.path.abspath(file_dir) if file_dir else None,
            "mongo": {"db": mongo[0].runs.database.name, "id": run._id} if mongo else None})
        resume = (run.config.get("runtime") or {}).get("resume") if isinstance(run.config, dict) else None
        if resume:
            link_resume(run, resume)
        flush()

    run.pre_run_hooks.append(record_ids)


def flush_run(run) -> None:
    """Write the metrics, info and output logged so far to ``run``'s records now (not at the next heartbeat)."""
    flush = getattr(run, "dng_flush", None)
    if flush is not None:
        flush()


def print_summary(run, text: str) -> None:
    """Print a task's final summary so that it ends up last in the run's output (see :class:`_SummaryLast`)."""
    if not _dist.is_main():  # rank 0 prints it; N copies of one summary would only confuse
        return
    if run is not None and any(isinstance(f, _SummaryLast) for f in getattr(run.run_logger, "filters", [])):
        run.dng_summary = text
    else:
        print(text)


def link_resume(run, resume: os.PathLike | str) -> Optional[dict]:
    """Link ``run`` to the run it resumes (the run directory or checkpoint file in ``resume``).

    ``run.info["resumed_from"]`` gets the predecessor's id, directory, MongoDB id and status; the predecessor's
    records (run.json, and its MongoDB document when this run logs to the same database) get ``resumed_by``, and
    if they still say RUNNING (it was killed) they are marked INTERRUPTED.
    """
    prev_dir = Path(resume)
    if prev_dir.is_file():
        prev_dir = prev_dir.parent
    entry, prev_info = {}, {}
    try:
        entry = json.loads((prev_dir / "run.json").read_text())
    except (OSError, ValueError):
        pass
    try:
        prev_info = json.loads((prev_dir / "info.json").read_text()).get("run") or {}
    except (OSError, ValueError, AttributeError):
        pass
    file_dir = (run.info.get("run") or {}).get("dir")
    if file_dir and os.path.abspath(file_dir) == os.path.abspath(prev_dir):
        return None
    link = to_python({"id": prev_info.get("id", prev_dir.name), "dir": str(prev_dir.resolve()),
                      "status": entry.get("status"), "mongo": prev_info.get("mongo")})
    run.info["resumed_from"] = link
    me = {"id": run._id, "dir": file_dir}
    if entry:
        if entry.get("status") == "RUNNING":
            entry.update(status="INTERRUPTED", stop_time=entry.get("heartbeat") or entry.get("start_time"))
        entry["resumed_by"] = to_python(me)
        try:
            _atomic_json(entry, prev_dir / "run.json")
        except OSError as exc:
            log.warning("could not mark %s as resumed: %s", prev_dir, exc)
    prev_mongo = link.get("mongo") or {}
    for obs in run.observers:
        if isinstance(obs, _ResilientMongoObserver) and not obs.dead and prev_mongo.get("id") is not None \
                and prev_mongo.get("db") == obs.runs.database.name:
            def update():
                obs.runs.update_one({"_id": prev_mongo["id"], "status": "RUNNING"},
                                    {"$set": {"status": "INTERRUPTED", "stop_time": datetime.datetime.utcnow()}})
                obs.runs.update_one({"_id": prev_mongo["id"]}, {"$set": {"resumed_by": to_python(me)}})
            obs._guarded(update)
    return link


# --------------------------------------------------------------------------- run helpers


def log_figure(run, fig, name: str, dpi: int = 100, close: bool = False) -> str:
    """Save matplotlib figure ``fig`` as a PNG artifact of ``run`` (e.g. ``_run``).

    The file lands in the run's file-storage directory and, with MongoDB, in
    GridFS.  ``.png`` is appended to ``name`` if missing; the artifact name is
    returned.  ``close=True`` also closes the figure, to save memory in loops.
    """
    if not name.lower().endswith(".png"):
        name += ".png"
    with tempfile.TemporaryDirectory(prefix="dng_fig_") as tmp:
        path = os.path.join(tmp, os.path.basename(name))
        fig.savefig(path, format="png", dpi=dpi)
        # Observers copy the file synchronously, so the temp dir can go.
        run.add_artifact(path, name=name, content_type="image/png")
    if close:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return name



# --------------------------------------------------------------------------- command line


def main(argv=None) -> int:
    """``python -m dng_tgn.tracking fix-stale [--mongo URL] [--runs-dir DIR] [--older-than S]``."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m dng_tgn.tracking", description="run-record housekeeping")
    sub = p.add_subparsers(dest="command", required=True)
    fs = sub.add_parser("fix-stale", help="mark RUNNING records without a recent heartbeat as INTERRUPTED")
    fs.add_argument("--mongo", default=os.environ.get(ENV_MONGO_URL), help="MongoDB URL (default $DNG_MONGO_URL)")
    fs.add_argument("--runs-dir", default=None, help="file-storage folder to scan (e.g. runs)")
    fs.add_argument("--older-than", type=float, default=None,
                    help=f"seconds without a heartbeat (default ${ENV_STALE_AFTER_S} or {STALE_AFTER_S:.0f})")
    args = p.parse_args(argv)
    if not args.mongo and not args.runs_dir:
        p.error("give --mongo URL and/or --runs-dir DIR")
    out = fix_stale(args.mongo, args.runs_dir, args.older_than)
    print(f"marked INTERRUPTED: {len(out['mongo'])} MongoDB run(s) {out['mongo']}, "
          f"{len(out['files'])} file-storage run(s) {out['files']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
