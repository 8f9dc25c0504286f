"""Re-execute notebooks in place (outputs written back), with this interpreter as the kernel.

    .venv/bin/python notebooks/execute.py                       # every notebook in this folder
    .venv/bin/python notebooks/execute.py embeddings.ipynb      # some of them

Run it after changing a notebook or what it shows, and commit the result: the notebooks are committed with their
outputs, and tests/test_notebook.py re-executes them (from a copy) so they cannot go stale.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import nbclient
import nbformat

HERE = Path(__file__).resolve().parent


def main(names: list[str]) -> None:
    paths = [HERE / n for n in names] if names else sorted(HERE.glob("*.ipynb"))
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "kernels" / "python3"  # a kernelspec for *this* interpreter, found first
        spec.mkdir(parents=True)
        (spec / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3", "language": "python"}))
        os.environ["JUPYTER_PATH"] = tmp
        for path in paths:
            nb = nbformat.read(path, as_version=4)
            t0 = time.perf_counter()
            nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                    resources={"metadata": {"path": str(HERE)}}).execute()
            nbformat.write(nb, path)
            print(f"{path.name}: executed in {time.perf_counter() - t0:.0f} s, outputs written back")


if __name__ == "__main__":
    main(sys.argv[1:])
