#!/usr/bin/env bash
# GPU check (issue 14, item 6): the project's CUDA encode, exact search and cross-encoder scoring
# beside its CPU fp32 paths and plain sentence-transformers, printed as one table
# (benchmarks/gpu_check.py says what each row measures). Under 8 minutes on one H200 + 16 cores.
#
# It needs python3 with torch, sentence-transformers and transformers, a copy of this tree
# (no data/, no .venv) and no network: it installs nothing from one. The project also imports,
# at module level, numpy, pyyaml, pyarrow, tqdm, cloudpickle (on the device machine already)
# and pydantic, isal (not there), plus faiss-cpu for the CPU exact-search path. Those (and a
# typing-extensions recent enough for pydantic) travel as wheels in .whl/ (ignored by git),
# made once on a machine with the venv and a registry:
#
#   bash benchmarks/gpu_check.sh --prepare        # cp312 manylinux wheels, versions of constraints.txt
#
# then, with the device tool (the tree plus .whl/ is about 25 MiB of its 64):
#
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=540)
#
# Options go to benchmarks/gpu_check.py: --model DIR / --cross-encoder DIR add a real model
# (a copied all-MiniLM-L6-v2 is ~87 MiB in fp32: over the tree limit, so usually absent),
# --only encode search ce workers, --budget-s S, --out FILE (default: $OUT/gpu_check.md when
# $OUT is set, so the table also comes back as a file). Here, without a GPU:
#
#   bash benchmarks/gpu_check.sh --device cpu     # dry mode: every column on the CPU, tiny sizes
#
# Exit status: 0 ok; 1 a check failed; 2 no CUDA device; 3 a module is missing (named).
set -u
cd "$(dirname "$0")/.." || exit 1
PY=${PYTHON:-python3}
WHEELS=(pydantic pydantic_core annotated-types typing-inspection typing-extensions isal faiss-cpu)

if [ "${1:-}" = "--prepare" ]; then
    pins=()
    for name in "${WHEELS[@]}"; do
        pin=$(grep -i -E "^${name//[-_]/[-_]}==" constraints.txt) || { echo "gpu_check: $name not in constraints.txt" >&2; exit 1; }
        pins+=("$pin")
    done
    mkdir -p .whl
    exec "${PIP_PYTHON:-.venv/bin/python}" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "${pins[@]}"
fi

bytes=$(du -s -B1 --exclude=.git . | cut -f1)
size="tree $((bytes / 1048576)) MiB without .git"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then  # a checkout: what the device tool would carry
    travel=$({ git ls-files -co --exclude-standard -z; find .whl -type f -print0 2>/dev/null; } |
        du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
    size="$size; $((travel / 1048576)) MiB of it travels (git's files and .whl/)"
fi
echo "gpu_check: $size (the device tool carries at most 64 MiB)"

if compgen -G ".whl/*.whl" >/dev/null; then
    # local files only (--no-index), installed aside; gpu_check.py puts them before the machine's
    # own packages (the constraints' versions: pydantic needs a recent typing-extensions)
    site=${TMPDIR:-/tmp}/gpu-check-site
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl; then
        export GPU_CHECK_SITE=$site
    else
        echo "gpu_check: could not install the carried wheels in .whl/ (see above); going on without them" >&2
    fi
fi

export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
extra=()
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
    extra=(--out "$OUT/gpu_check.md")
fi
exec "$PY" benchmarks/gpu_check.py "${extra[@]}" "$@"
