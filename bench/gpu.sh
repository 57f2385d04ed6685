#!/usr/bin/env bash
# One GPU's rates with this harness (pre-training per method, real shards vs in memory; fine-tuning;
# feature extraction) as one JSON: the last line printed, also written to $OUT_JSON.
#
#   bash bench/gpu.sh            # a GPU machine: < 8 min
#   bash bench/gpu.sh --cpu      # the same measurements, tiny, on the CPU: < 1 min
#
# Interpreter: $PYTHON, else the project's .venv when present, else python3 (torch >= 2.4 preinstalled).
# Missing Python packages are installed from the wheels in $WHEELS (default bench/wheels/, filled on a
# machine with network access: see bench/README.md) with pip --no-index; nothing is downloaded here.
# Extra arguments go to bench/gpu_bench.py (--methods, --loader-workers, --steps, --samples, ...).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
WHEELS="${WHEELS:-bench/wheels}"
OUT_JSON="${OUT_JSON:-tbench-out/bench/gpu.json}"

# import name -> distribution name of what the measured code imports beyond torch/torchvision/numpy/PIL
declare -A NEEDS=([webdataset]=webdataset [braceexpand]=braceexpand [open_clip]=open_clip_torch [ftfy]=ftfy
                  [wcwidth]=wcwidth [timm]=timm [safetensors]=safetensors [huggingface_hub]=huggingface_hub
                  [yaml]=pyyaml [regex]=regex [tqdm]=tqdm)
# one interpreter finds every module without importing it (importing each in its own process took ~22 s:
# open_clip and timm alone take seconds to import)
mapfile -t absent < <("$PYTHON" -c \
  'import importlib.util, sys; [print(m) for m in sys.argv[1:] if importlib.util.find_spec(m) is None]' "${!NEEDS[@]}")
missing=()
for mod in ${absent[@]+"${absent[@]}"}; do missing+=("${NEEDS[$mod]}"); done
if (( ${#missing[@]} )); then
  if [[ -d "$WHEELS" ]]; then
    echo "installing ${missing[*]} from $WHEELS (--no-index)"
    "$PYTHON" -m pip install --quiet --no-index --find-links "$WHEELS" "${missing[@]}"
  else
    echo "missing ${missing[*]} and no wheel folder $WHEELS: see bench/README.md (GPU machine)" >&2
    exit 2
  fi
fi

"$PYTHON" bench/gpu_bench.py --json "$OUT_JSON" "$@"
