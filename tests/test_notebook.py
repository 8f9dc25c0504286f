"""Execute every notebook under notebooks/ end to end, so none can rot.

The committed .ipynb files carry their outputs; here each is re-executed from an in-memory copy (written to a
temporary folder for inspection, never back over the committed file) and must run without an error.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.fixture
def this_python_kernel(tmp_path, monkeypatch):
    """A 'python3' kernelspec that runs *this* interpreter, found before any other on JUPYTER_PATH.

    Without it, a python3 kernelspec installed elsewhere (system Jupyter, another venv) could run the
    notebook against a different environment, where dng_tgn is missing or stale.
    """
    spec = tmp_path / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (dng_tgn test)",
        "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    return "python3"


def execute(name: str, kernel: str, tmp_path: Path):
    """Run notebooks/<name> from a copy; returns the executed notebook (also saved under tmp_path)."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert any(c.cell_type == "code" and c.outputs for c in nb.cells), f"{name} is committed without outputs"
    n_code = sum(c.cell_type == "code" for c in nb.cells)
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))  # which interpreter ran it
    client = nbclient.NotebookClient(nb, timeout=180, kernel_name=kernel,
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    nbformat.write(nb, tmp_path / name)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert nb.cells[-1].outputs[0].text.strip() == sys.executable
    assert sum(c.cell_type == "code" and c.execution_count is not None for c in nb.cells) == n_code + 1
    return nb, outputs


def _text(outputs) -> str:
    return "".join(o.get("text", "") for o in outputs)


def _images(outputs) -> int:
    return sum("image/png" in o.get("data", {}) for o in outputs)


def test_all_notebooks_are_tested():
    assert {p.name for p in NOTEBOOKS.glob("*.ipynb")} == {
        "explore_event_streams.ipynb", "embeddings.ipynb", "results.ipynb"}


def test_explore_event_streams(this_python_kernel, tmp_path):
    nb, outputs = execute("explore_event_streams.ipynb", this_python_kernel, tmp_path)
    text = _text(outputs)
    assert "+V input" in text and "+E convs.0.weight" in text and "SimpleViT" in text  # all three streams
    assert text.count("replay vs") + text.count("appear exactly once") == 3  # each checked against its model
    assert "SIREN: nodes written at t^1..t^L: [8, 8, 1]" in text  # memory written once per node, per layer
    assert "CNN: nodes written at t^1..t^L: [4, 4, 4, 10]" in text
    assert "ViT: nodes written at t^1..t^L:" in text
    # timelines, three whole-stream figures, the kernel slots, three memory figures
    assert _images(outputs) >= 8
    assert "Why the nodes of one layer look alike" in "".join(c.source for c in nb.cells if c.cell_type == "markdown")


def test_embeddings(this_python_kernel, tmp_path):
    _, outputs = execute("embeddings.ipynb", this_python_kernel, tmp_path)
    text = _text(outputs)
    assert "held-out accuracy" in text and "reloaded encoder gives identical embeddings: True" in text
    assert "-> best:" in text
    assert _images(outputs) >= 4  # samples, loss, PCA vs t-SNE, the best one


def test_results_without_and_with_results(this_python_kernel, tmp_path, monkeypatch):
    empty = tmp_path / "no_results"
    empty.mkdir()
    monkeypatch.setenv("DNG_RESULTS_DIR", str(empty))
    _, outputs = execute("results.ipynb", this_python_kernel, tmp_path)
    assert "no results/*.json found" in _text(outputs) and _images(outputs) == 0

    full = tmp_path / "results"
    full.mkdir()
    rows = [{"name": row, "dataset": ds, "seeds": [0, 1], "test_acc": [a, a + 0.02], "mean": a + 0.01, "std": 0.01,
             "params": 1000, "train_s": 3.0} for ds in ("mnist", "fashion") for row, a in (("dng", 0.8), ("ng_gnn", 0.7))]
    (full / "inr.json").write_text(json.dumps({"scale": "bench", "machine": "test", "date": "2026-01-01",
                                               "command": "python -m experiments.tables inr", "rows": rows}))
    (full / "notes.json").write_text(json.dumps({"tau": 0.5, "r2": 0.3}))
    monkeypatch.setenv("DNG_RESULTS_DIR", str(full))
    _, outputs = execute("results.ipynb", this_python_kernel, tmp_path)
    assert "2 result file(s)" in _text(outputs) and _images(outputs) == 2
