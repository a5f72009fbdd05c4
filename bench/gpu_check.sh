#!/usr/bin/env bash
# The GPU check on a CUDA machine, offline: bench/gpu_check.sh OUT_DIR [options for bench/gpu_check.py]
#
# Needs torch with CUDA, JAX (with its CUDA plugin, to test Flax on the GPU), flax, transformers,
# accelerate and safetensors installed. diffusers, if missing, is installed from the wheels in $WHEELS
# (default wheels/; `make gpu-wheels` downloads them where there is network) into a scratch folder, not
# into the machine's Python. Writes OUT_DIR/gpu_check.{json,md}; stops after $GPU_CHECK_LIMIT seconds
# (default 470) whatever happens, keeping what the finished sections measured.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:?usage: bench/gpu_check.sh OUT_DIR [options for bench/gpu_check.py]}"
shift
PY="${PYTHON:-python3}"
WHEELS="${WHEELS:-wheels}"
SITE="${SITE:-/tmp/sdkit-gpu-check-site}"
if ! "$PY" -c "import diffusers" 2>/dev/null; then
  if ! ls "$WHEELS"/diffusers-*.whl >/dev/null 2>&1; then
    echo "gpu_check: diffusers is not installed and $WHEELS/ has no diffusers wheel; run 'make gpu-wheels'" \
         "on a machine with network and bring $WHEELS/ along" >&2
    exit 2
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
rc=0
timeout -k 10 "${GPU_CHECK_LIMIT:-470}" "$PY" bench/gpu_check.py --out "$OUT" "$@" || rc=$?
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
  echo "gpu_check: stopped at the ${GPU_CHECK_LIMIT:-470} s limit; $OUT holds the sections that finished" >&2
fi
exit "$rc"
