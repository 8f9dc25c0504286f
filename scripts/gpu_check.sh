#!/usr/bin/env bash
# One CUDA GPU, <= 5 minutes: does dng_tgn install, pass its tests, run its experiments and how fast is the encoder?
#
#   bash scripts/gpu_check.sh                              # on the GPU machine, from anywhere
#   DNG_GPU_CHECK_ALLOW_CPU=1 bash scripts/gpu_check.sh    # the same steps on a CPU, tiny budget (to try it here)
#
# Made for a machine nobody here has tried: Python 3.12 with its own CUDA torch, no DGL, no Sacred/pymongo, no
# network. It uses that torch (a venv with --system-site-packages under $DNG_GPU_CHECK_VENV, default
# /tmp/dng_gpu_check_venv), installs from a wheelhouse only the packages that are missing there (made here by
# scripts/make_wheelhouse.sh; default shared/wheelhouse, or $DNG_WHEELHOUSE), installs the project with
# --no-deps, then runs each step below under its own timeout, continuing past failures:
#
#   env        nvidia-smi, python/torch/CUDA versions, DGL availability
#   install    wheels + `pip install --no-deps -e .` (falls back to PYTHONPATH)
#   import     `import dng_tgn` (works without DGL: dng_tgn/_dgl.py turns a missing DGL into the torch path)
#   tests      the test suite (pytest -q; DGL tests skip without DGL; the encoder defaults to CUDA)
#   paths      torch path on CUDA == on CPU; DGL == torch on CUDA where DGL has CUDA kernels (else skipped);
#              sparse Eq. 4 route == per-edge route on CUDA; bf16 and fp16 autocast run on CUDA
#   experiments one tiny run of each Sacred experiment (static_vs_dynamic `with tiny`; INR2JLS, CNN and ViT
#              generalisation on tiny datasets written first with the test helpers), on the GPU
#   timing     encoder fwd+bwd and inference per INR and peak memory, fp32/bf16/fp16, batches of SIRENs
#
# Writes results/gpu_check.log (everything) and results/gpu_check.md (step table + timing table). Exit code:
# the number of failed steps (0: all passed). Step timeouts (seconds) sum to 295 s; scale them with
# DNG_GPU_CHECK_SCALE=<factor> (e.g. 3 on a slow machine). On a CPU the test step will time out: the suite takes
# longer than its GPU budget there; the log still shows how far it got.
set -u
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 99
RESULTS="$REPO/results"
mkdir -p "$RESULTS"
LOG="$RESULTS/gpu_check.log"
MD="$RESULTS/gpu_check.md"
WORK="$(mktemp -d /tmp/dng_gpu_check.XXXXXX)"
: > "$LOG"
ALLOW_CPU="${DNG_GPU_CHECK_ALLOW_CPU:-0}"
WHEELHOUSE="${DNG_WHEELHOUSE:-$REPO/shared/wheelhouse}"
VENV="${DNG_GPU_CHECK_VENV:-/tmp/dng_gpu_check_venv}"
SCALE="${DNG_GPU_CHECK_SCALE:-1}"
BASE_PY="${PYTHON:-$(command -v python3.12 || command -v python3 || command -v python)}"
export DNG_RUNS_DIR="$WORK/runs" PYTHONDONTWRITEBYTECODE=1
unset DNG_MONGO_URL
if [ "$ALLOW_CPU" = 1 ]; then DEVICE=cpu; else DEVICE=cuda; fi
export DNG_GPU_CHECK_DEVICE="$DEVICE"

declare -a NAMES STATUS SECS
log() { echo "$*" | tee -a "$LOG"; }
budget() { python3 -c "import sys; print(max(5, int(float(sys.argv[1]) * float(sys.argv[2]))))" "$1" "$SCALE" 2>/dev/null || echo "$1"; }

# step NAME TIMEOUT_S COMMAND...: run with a timeout, log everything, record the outcome, never abort the script
step() {
  local name="$1" limit; limit="$(budget "$2")"; shift 2
  log ""
  log "=== [$name] (timeout ${limit}s) $(date -u +%H:%M:%S) ==="
  local t0=$SECONDS rc
  # functions cannot be timed out directly: run them in a child bash that inherits them (export -f)
  timeout --kill-after=10 "$limit" bash -c '"$@"' _ "$@" >> "$LOG" 2>&1
  rc=$?
  local status=ok
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status="TIMEOUT (${limit}s)"; elif [ $rc -ne 0 ]; then status="FAILED (exit $rc)"; fi
  NAMES+=("$name"); STATUS+=("$status"); SECS+=("$((SECONDS - t0))")
  log "=== [$name] $status in $((SECONDS - t0))s ==="
}

# ---------------------------------------------------------------------------------------------------- env
env_step() {
  echo "repo: $REPO   device: $DEVICE   python: $BASE_PY   wheelhouse: $WHEELHOUSE"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "nvidia-smi: not found"
  "$BASE_PY" - <<'PY'
import os, sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| CUDA", torch.version.cuda,
      "| cuda available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("GPU:", torch.cuda.get_device_name(0), "| bf16", torch.cuda.is_bf16_supported())
elif os.environ.get("DNG_GPU_CHECK_DEVICE") == "cuda":
    sys.exit("CUDA is not available to this torch: set DNG_GPU_CHECK_ALLOW_CPU=1 to run the CPU variant")
PY
}

# ---------------------------------------------------------------------------------------------------- install
install_step() {
  if [ "$PY" != "$BASE_PY" ] && [ ! -x "$PY" ]; then
    "$BASE_PY" -m venv --system-site-packages "$VENV" || return 1
  fi
  local py="$PY"
  echo "installing into: $("$py" -c 'import sys; print(sys.prefix)')"
  "$py" -c "import torch" || { echo "the venv does not see the machine's torch"; return 1; }
  if [ -d "$WHEELHOUSE" ]; then
    # install a wheel only when its distribution is missing: the machine's own packages (torch, numpy...) win
    local missing
    missing="$("$py" - "$WHEELHOUSE" <<'PY'
import sys, re
from pathlib import Path
from importlib import metadata
out = []
for whl in sorted(Path(sys.argv[1]).glob("*.whl")):
    dist = whl.name.split("-")[0]
    try:
        metadata.version(dist)
    except metadata.PackageNotFoundError:
        try:
            metadata.version(dist.replace("_", "-"))
        except metadata.PackageNotFoundError:
            out.append(str(whl))
print("\n".join(out))
PY
)"
    if [ -n "$missing" ]; then
      echo "installing from the wheelhouse:"; echo "$missing" | sed 's#.*/#  #'
      # shellcheck disable=SC2086
      "$py" -m pip install --quiet --no-index --no-deps $missing || return 1
    else
      echo "every wheelhouse package is already installed"
    fi
  else
    echo "WARNING: no wheelhouse at $WHEELHOUSE (run scripts/make_wheelhouse.sh where there is network)"
  fi
  if (cd /tmp && "$py" -c "import dng_tgn, pathlib, sys; sys.exit(pathlib.Path(dng_tgn.__file__).resolve().parents[1] != pathlib.Path(sys.argv[1]).resolve())" "$REPO") 2>/dev/null; then
    echo "dng_tgn already installed from $REPO"
  elif ! "$py" -m pip install --quiet --no-index --no-deps --no-build-isolation -e "$REPO"; then
    echo "WARNING: pip install -e failed; using PYTHONPATH=$REPO instead"
  fi
  "$py" -m pip check || echo "(pip check reports the above; --no-deps installs are expected to leave some)"
}

# the machine's python is used through a venv that sees its site-packages (its torch); a python that already is
# a venv (e.g. this project's .venv, for the CPU variant) is used as it is
if "$BASE_PY" -c "import sys; sys.exit(0 if sys.prefix != sys.base_prefix else 1)" 2>/dev/null; then
  PY="$BASE_PY"
else
  PY="$VENV/bin/python"
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

import_step() {
  "$PY" - <<'PY'
import dng_tgn, dng_tgn._dgl as d, torch
print("dng_tgn from", dng_tgn.__file__)
print("DGL:", "available" if d.HAS_DGL else f"absent ({d.DGL_IMPORT_ERROR})")
from dng_tgn.nn import DNGEncoder
print("default encoder device:", DNGEncoder(8, fourier_size=4).device)
PY
}

tests_step() {
  local dev_args=()
  # --continue-on-collection-errors: a test module that needs a package this machine lacks (pandas, scipy...)
  # is reported as an error and the rest still runs
  "$PY" -m pytest -q -p no:cacheprovider -o addopts="" --durations=15 --continue-on-collection-errors "${dev_args[@]}" tests
}

# ---------------------------------------------------------------------------------------------------- paths
paths_step() {
  "$PY" - <<'PY'
import os, torch, dng_tgn
import dng_tgn.nn.memory as memory_module
from dng_tgn._dgl import dgl_supports
from dng_tgn.nets import NFNSiren, ZooCNN
from dng_tgn.nn import DNGEncoder, ExecutionPath
from dng_tgn.nn.precision import autocast
dev = os.environ["DNG_GPU_CHECK_DEVICE"]
torch.manual_seed(0)
streams = [dng_tgn.to_event_stream(NFNSiren()) for _ in range(8)] + [dng_tgn.to_event_stream(ZooCNN().eval()) for _ in range(2)]
batch = dng_tgn.batch_streams(streams)
enc = DNGEncoder(64, message_heads=batch.num_slots, head_dim=8, fourier_size=32, max_timestamps=batch.max_timestamps,
                 device="cpu", path=ExecutionPath.TORCH)
with torch.no_grad():
    ref = enc(batch).embedding
    enc.to(dev)
    got = enc(batch).embedding.cpu()
torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
print(f"torch path on {dev} == torch path on cpu: max diff {float((got - ref).abs().max()):.2e}")
sirens = dng_tgn.batch_streams(streams[:8])
enc1 = DNGEncoder(64, fourier_size=32, max_timestamps=3, device=dev, path=ExecutionPath.TORCH)
with torch.no_grad():
    a = enc1(sirens).embedding
    memory_module.SPARSE_BASIS_MESSAGE = False
    b = enc1(sirens).embedding
    memory_module.SPARSE_BASIS_MESSAGE = True
torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
print(f"sparse Eq. 4 route == per-edge route on {dev}: max diff {float((a - b).abs().max()):.2e}")
if dgl_supports(dev):
    with torch.no_grad():
        enc.path = ExecutionPath.DGL
        d = enc(batch).embedding.cpu()
    torch.testing.assert_close(d, got, rtol=1e-4, atol=1e-4)
    print(f"DGL path == torch path on {dev}: max diff {float((d - got).abs().max()):.2e}")
else:
    print(f"DGL path on {dev}: skipped (no DGL with {dev} kernels here)")
for mode in ("bf16", "fp16"):
    if mode == "fp16" and dev != "cuda":
        print("fp16 autocast: skipped on cpu (refused by design)"); continue
    with torch.no_grad(), autocast(mode, dev):
        low = enc1(sirens).embedding.float()
    print(f"{mode} autocast on {dev}: max |diff| vs fp32 {float((low - a).abs().max()):.3f}")
    assert torch.isfinite(low).all()
PY
}

# ---------------------------------------------------------------------------------------------------- experiments
experiments_step() {
  "$PY" - "$WORK" <<'PY'
import os, sys, traceback
from pathlib import Path
sys.path.insert(0, os.getcwd())
work = Path(sys.argv[1])
dev = os.environ["DNG_GPU_CHECK_DEVICE"]
import importlib.util
missing = [m for m in ("pandas", "matplotlib", "scipy", "sacred") if importlib.util.find_spec(m) is None]
if missing:  # the experiments and their dataset writers need these; say so instead of a traceback
    sys.exit(f"SKIPPED: the experiments need {missing}, absent here; build the wheelhouse with "
             "`bash scripts/make_wheelhouse.sh --full` (pandas, matplotlib, scipy, scikit-learn) and rerun")
import tests.test_downstream_experiments as t  # the test suite's tiny dataset writers and configs

failures = []

def attempt(name, fn):
    try:
        r = fn()
        print(f"[{name}] ok: status {getattr(r, 'status', '?')}, result {getattr(r, 'result', None)!r}"[:400])
    except Exception:
        failures.append(name)
        print(f"[{name}] FAILED"); traceback.print_exc()

def runtime(cfg):
    cfg["runtime"] = dict(cfg.get("runtime", {}), device=dev)
    return cfg

def static_vs_dynamic():
    from experiments.static_vs_dynamic import ex
    return ex.run(named_configs=["tiny"], config_updates={"runtime": {"device": dev}}, options={"--capture": "no"})

def inr2jls(kind):
    from experiments.inr2jls import ex
    root = work / "inrs"
    if not root.exists():
        t.write_inr_set(root)
    return ex.run(config_updates=runtime(t.inr_tiny(root, kind)), options={"--capture": "no"})

def generalization(module, writer, kind):
    ex = __import__(f"experiments.{module}", fromlist=["ex"]).ex
    root = work / module
    if not root.exists():
        writer(root)
    return ex.run(config_updates=runtime(t.tiny_gen(root, kind)), options={"--capture": "no"})

attempt("static_vs_dynamic with tiny", static_vs_dynamic)
for kind in ("dng", "ng_gnn"):
    attempt(f"inr2jls [{kind}]", lambda: inr2jls(kind))
    attempt(f"cnn_generalization [{kind}]", lambda: generalization("cnn_generalization", t.write_cnn_zoo, kind))
    attempt(f"vit_generalization [{kind}]", lambda: generalization("vit_generalization", t.write_vit_zoo, kind))
if failures:
    sys.exit(f"failed: {failures}")
PY
}

# ---------------------------------------------------------------------------------------------------- timing
timing_step() {
  "$PY" - "$MD.timing" <<'PY'
import os, statistics, sys, time, torch, dng_tgn
from dng_tgn.nets import NFNSiren
from dng_tgn.nn import DNGEncoder, ExecutionPath
from dng_tgn.nn.precision import autocast, grad_scaler
dev = os.environ["DNG_GPU_CHECK_DEVICE"]
cuda = dev == "cuda"
sizes = [32, 256, 1024] if cuda else [4]  # the CPU variant only proves the step runs
repeats = 10 if cuda else 2
modes = ["fp32", "bf16", "fp16"] if cuda else ["fp32"]
def sync():
    if cuda: torch.cuda.synchronize()
enc = DNGEncoder(512, fourier_size=128, max_timestamps=3, device=dev, path=ExecutionPath.TORCH)
rows = []
torch.manual_seed(0)
for n in sizes:
    batch = dng_tgn.batch_state_dicts([NFNSiren().state_dict() for _ in range(n)]).to(dev)
    for mode in modes:
        scaler = grad_scaler(mode, dev)
        def fb():
            enc.zero_grad(set_to_none=True)
            with autocast(mode, dev):
                loss = enc(batch).embedding.float().square().mean()
            scaler.scale(loss).backward()
        def inf():
            with torch.no_grad(), autocast(mode, dev):
                enc(batch)
        out = {}
        for name, fn in (("fb", fb), ("inf", inf)):
            fn(); sync()
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter(); fn(); sync(); ts.append(time.perf_counter() - t0)
            out[name] = statistics.median(ts)
            out[name + "_mem"] = torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan")
        rows.append((n, mode, out))
        print(f"batch {n:5d} {mode}: fwd+bwd {out['fb'] / n * 1e3:.3f} ms/INR, infer {out['inf'] / n * 1e3:.3f} ms/INR, "
              f"peak {out['fb_mem']:.0f} MiB (fwd+bwd) / {out['inf_mem']:.0f} MiB (infer)", flush=True)
name = torch.cuda.get_device_name(0) if cuda else "CPU"
lines = [f"Encoder timing on {name} (DNGEncoder 512/F=128, 3 timestamps, torch path; SIRENs 2-32-32-1; medians of {repeats}):", "",
         "| batch | amp | fwd+bwd ms/INR | infer ms/INR | peak MiB fwd+bwd | peak MiB infer |", "|---:|---|---:|---:|---:|---:|"]
for n, mode, o in rows:
    lines.append(f"| {n} | {mode} | {o['fb'] / n * 1e3:.3f} | {o['inf'] / n * 1e3:.3f} | {o['fb_mem']:.0f} | {o['inf_mem']:.0f} |")
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
PY
}

# ---------------------------------------------------------------------------------------------------- run
export REPO WHEELHOUSE VENV BASE_PY PY WORK MD DEVICE
export -f env_step install_step import_step tests_step paths_step experiments_step timing_step
START=$SECONDS
log "dng_tgn GPU check, $(date -u '+%Y-%m-%d %H:%M:%S UTC'), device=$DEVICE, log: $LOG"
# timeouts sum to 295 s (+ at most 10 s of kill grace per step): the whole check fits in 5 minutes
step env 15 env_step
step install 30 install_step
if [ ! -x "$PY" ]; then PY="$BASE_PY"; export PY; fi
step import 15 import_step
step paths 30 paths_step
step timing 30 timing_step
step experiments 45 experiments_step
step tests 130 tests_step
TOTAL=$((SECONDS - START))

failed=0
{
  echo "# GPU check ($DEVICE)"
  echo ""
  echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); total ${TOTAL}s; command: \`bash scripts/gpu_check.sh\`$( [ "$ALLOW_CPU" = 1 ] && echo ' with DNG_GPU_CHECK_ALLOW_CPU=1')"
  echo "- machine: $(command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name --format=csv,noheader | head -1 || uname -m); log: results/gpu_check.log"
  echo ""
  echo "| step | result | seconds |"
  echo "|---|---|---:|"
  for i in "${!NAMES[@]}"; do
    echo "| ${NAMES[$i]} | ${STATUS[$i]} | ${SECS[$i]} |"
  done
  echo ""
  grep -E "passed|failed|error" "$LOG" | grep -E "^[0-9]+ (passed|failed)|^=+ .*(passed|failed)" | tail -1 | sed 's/^/tests: /'
  echo ""
  [ -f "$MD.timing" ] && cat "$MD.timing"
} > "$MD"
rm -f "$MD.timing"
for s in "${STATUS[@]}"; do [ "$s" = ok ] || failed=$((failed + 1)); done
cat "$MD" | tee -a "$LOG"
log "failed steps: $failed (work dir $WORK)"
exit "$failed"
