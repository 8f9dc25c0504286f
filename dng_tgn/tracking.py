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

import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

# Sacred 0.8.7 imports pkg_resources, which warns on every import; it is
# Sacred's problem, not the user's, so keep it out of their output.
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
]

ENV_MONGO_URL = "DNG_MONGO_URL"
ENV_RUNS_DIR = "DNG_RUNS_DIR"
DEFAULT_DB_NAME = "dng_tgn"
DEFAULT_RUNS_DIR = "runs"
PING_TIMEOUT_S = 1.5
# Per-operation server selection timeout for the observer's own client.
OBSERVER_TIMEOUT_MS = 5000
MONGO_FAILURE_SUBDIR = "_mongo_failed"

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
    return MongoObserver(
        url=url,
        db_name=db_name,
        failure_dir=str(failure_dir),
        serverSelectionTimeoutMS=OBSERVER_TIMEOUT_MS,
    )


class _FileStorage(FileStorageObserver):
    """``FileStorageObserver`` that never fails a run because its directory exists.

    With MongoDB attached, Sacred names the run after Mongo's run id, and a
    directory of that name may already exist from earlier file-only runs;
    stock Sacred then aborts the run with ``FileExistsError``.  Here the
    directory gets a suffix instead (``7_2``); run.json still holds the id.
    """

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
        if run.unobserved:
            return run
        directory = runs_dir(self.path, self.runs_base)
        run.observers.append(_FileStorage(directory))
        if url:
            observer = mongo_observer(url, directory / MONGO_FAILURE_SUBDIR, db_name=self.db_name)
            if observer is not None:
                run.observers.append(observer)
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

