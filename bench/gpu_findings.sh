#!/usr/bin/env bash
# The findings' GPU session (docs/findings.md, bench/RESULTS.md): from the repository root on a CUDA
# machine, one command that runs the sweep-throughput benchmark and then the paper-length sweeps,
# packed, in parallel on the one GPU (inline engine, no tracking: `apd sweep sync`/`--resume` can
# replay MLflow later from each OUT). Everything it writes goes to $OUT (default out/gpu):
# one NAME.tgz per sweep folder, calibration.tgz (the quickstart calibration sweeps) and
# resid-mlp-1.tgz, which also holds every log and the targets used (the GPU-trained residual MLP).
#   SWEEP_SECONDS  wall-clock limit of each sweep (default 300)
#   DRY=1          the same commands on the CPU with 4-step sweeps (checks the script, not the science)
# The GPU machine had torch, numpy, scipy, pandas, pyarrow, matplotlib, seaborn, PyYAML and tqdm;
# pydantic and optuna travel as wheels in .whl/ when present.
set -u
OUTDIR=${OUT:-out/gpu}
WORK=${WORK:-gpu-work}
mkdir -p "$OUTDIR" "$WORK/logs"
if [ -d .whl ] && ! python3 -c "import pydantic, optuna" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
export APD_CACHE_DIR=${APD_CACHE_DIR:-$PWD/.gpu/cache} PYTHONUNBUFFERED=1 MPLBACKEND=Agg OMP_NUM_THREADS=1
export MLFLOW_DISABLE_TELEMETRY=true RAY_USAGE_STATS_ENABLED=0
T=${SWEEP_SECONDS:-300}
DEVICE=cuda
SWEEPS="sweeps/tms-5-2.yaml:120 sweeps/tms-5-2-code.yaml:72 sweeps/tms-5-2-id.yaml:24 sweeps/tms-40-10.yaml:12
  sweeps/resid-mlp-1.yaml:9 bench/calibration/quickstart-gradient_apd.yaml:135 bench/calibration/quickstart-gradient.yaml:135"
if [ "${DRY:-0}" = 1 ]; then  # tiny copies of the same sweeps, on the CPU
  DEVICE=cpu
  mkdir -p "$WORK/dry"
  SWEEPS=$(for s in $SWEEPS; do f=${s%%:*}; echo "$WORK/dry/$(basename "$f"):${s##*:}"; done)
  python3 - "$WORK/dry" sweeps/tms-5-2.yaml sweeps/tms-5-2-code.yaml sweeps/tms-5-2-id.yaml sweeps/tms-40-10.yaml \
    sweeps/resid-mlp-1.yaml bench/calibration/quickstart-gradient_apd.yaml bench/calibration/quickstart-gradient.yaml <<'PY'
import sys, yaml
from pathlib import Path
for f in sys.argv[2:]:
    d = yaml.safe_load(Path(f).read_text())
    d["fixed"] = {**(d.get("fixed") or {}), "steps": 4, "batch_size": 32, "device": "cpu"}
    d["report_every"] = 2
    d.pop("checkpoint_every", None)
    (Path(sys.argv[1]) / Path(f).name).write_text(yaml.safe_dump(d, sort_keys=False))
PY
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1; nproc; date -u;
  python3 -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"; } \
  > "$WORK/logs/machine.txt"

# 1. settings per hour, packed vs one process per setting vs 8 processes sharing the device (alone on it)
timeout 40 python3 bench/sweep_throughput.py --device $DEVICE --settings 16 --steps 150 --json \
  > "$WORK/logs/throughput.json" 2> "$WORK/logs/throughput.err"
timeout 20 python3 bench/sweep_throughput.py --device $DEVICE --settings 16 --steps 150 --procs 8 --json \
  > "$WORK/logs/throughput-procs8.json" 2> "$WORK/logs/throughput-procs8.err"

# 2. the sweeps, each as one pack, all at once
start=$(date +%s)
for s in $SWEEPS; do
  file=${s%%:*}; pack=${s##*:}; name=$(basename "$file" .yaml)
  ( timeout "$T" python3 -m apd.cli sweep "$file" --engine inline --no-tracking --out "$WORK/out/$name" --pack "$pack" \
      > "$WORK/logs/$name.log" 2>&1; echo "$name rc=$? after $(( $(date +%s) - start )) s" >> "$WORK/logs/status.txt" ) &
done
wait
cp -r "$APD_CACHE_DIR" "$WORK/cache"
for name in tms-5-2 tms-5-2-code tms-5-2-id tms-40-10; do
  [ -d "$WORK/out/$name" ] && tar czf "$OUTDIR/$name.tgz" -C "$WORK/out" --exclude='checkpoint*.pt' "$name"
done
tar czf "$OUTDIR/calibration.tgz" -C "$WORK/out" --exclude='checkpoint*.pt' --exclude='components.pt' \
  $(cd "$WORK/out" && ls -d quickstart-* 2>/dev/null)
tar czf "$OUTDIR/resid-mlp-1.tgz" -C "$WORK" --exclude='components.pt' --exclude='checkpoint*.pt' logs cache \
  $(cd "$WORK" && ls -d out/resid* 2>/dev/null)
ls -la "$OUTDIR"; cat "$WORK/logs/status.txt"
