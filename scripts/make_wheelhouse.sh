#!/usr/bin/env bash
# Download, here (with network), the wheels that scripts/gpu_check.sh installs on a GPU machine without one.
#
#   bash scripts/make_wheelhouse.sh [DEST] [--full]
#
# DEST defaults to shared/wheelhouse (kept out of git by .gitignore). The GPU machine brings its own Python 3.12
# and torch (CUDA build) but lacks the rest, so we fetch wheels for CPython 3.12 on manylinux x86_64, one
# package at a time and without dependencies (pip download --no-deps --only-binary=:all: --python-version 3.12):
# gpu_check.sh installs them with --no-index --no-deps, only those whose module is missing there.
#
# Default set (~20 MB): numpy (dng_tgn imports it), the pure-Python runtime deps (sacred and its deps,
# pymongo + dnspython, tqdm, networkx, packaging, setuptools<81 for sacred's pkg_resources), and pytest +
# hypothesis (+ SecantusDB, the test-only MongoDB stand-in) for the test suite. torch's own deps (sympy,
# jinja2, filelock, fsspec, typing-extensions) come with the machine's torch. --full adds pandas, scipy, matplotlib (+ its deps) and scikit-learn
# (~90 MB: too big to carry with the working tree; use it only where the wheelhouse travels on its own).
# DGL is left out on purpose: PyPI's wheel is CPU-only and cp311-only, so the GPU run takes the torch path.
set -u
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$HERE/shared/wheelhouse"
FULL=0
for arg in "$@"; do
  case "$arg" in
    --full) FULL=1 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) DEST="$arg" ;;
  esac
done
PY="${PYTHON:-$HERE/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
mkdir -p "$DEST"

# versions as in this project's venv where it matters (sacred 0.8.7 needs wrapt<2, and accepts jsonpickle 4)
BASE=(
  "numpy==2.4.6" "packaging" "setuptools>=77,<81" "tqdm" "networkx"
  "sacred==0.8.7" "docopt-ng==0.9.0" "jsonpickle==4.1.4" "munch" "wrapt==1.17.3" "py-cpuinfo" "colorama"
  "GitPython" "gitdb" "smmap" "pymongo" "dnspython"
  "pytest" "iniconfig" "pluggy" "hypothesis" "attrs" "sortedcontainers" "secantusdb==0.7.0b3"
)
EXTRA=(
  "pandas" "python-dateutil" "pytz" "tzdata" "six" "scipy" "scikit-learn" "joblib" "threadpoolctl"
  "matplotlib" "contourpy" "cycler" "fonttools" "kiwisolver" "pillow" "pyparsing"
)
PKGS=("${BASE[@]}")
[ "$FULL" = 1 ] && PKGS+=("${EXTRA[@]}")

failed=()
for spec in "${PKGS[@]}"; do
  if ! "$PY" -m pip download --quiet --dest "$DEST" --no-deps --only-binary=:all: \
      --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
      "$spec"; then
    failed+=("$spec")
  fi
done
echo "wheelhouse: $DEST ($(ls "$DEST"/*.whl 2>/dev/null | wc -l) wheels, $(du -sh "$DEST" | cut -f1))"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "FAILED to download: ${failed[*]}" >&2
  exit 1
fi
