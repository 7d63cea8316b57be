#!/usr/bin/env bash
# Puts faiss-gpu into ./.venv, in front of the base environment's faiss-cpu (same `faiss` module):
#
#   make install GPU=1                   # `make install` does it by itself when nvidia-smi lists a GPU
#   bash tools/install_faiss_gpu.sh      # after tools/install_env.sh
#   bash tools/install_faiss_gpu.sh --dry-run    # print the pip command only
#
# The shared base environment (tools/install_env.sh) is left as it is, so it keeps its hash and its
# cache; .venv's site-packages comes before the base's on sys.path, so `import faiss` finds the GPU
# build. faiss-gpu is taken at the version requirements/lock.txt pins for faiss-cpu, with the rest of
# lock.txt as constraints so that nothing the base pins is replaced.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${SERKIT_VENV:-$ROOT/.venv}"  # SERKIT_VENV: another environment built the same way
LOCK="$ROOT/requirements/lock.txt"
MARK="$VENV/.serkit-faiss-gpu"

version=$(sed -n 's/^faiss-cpu==//p' "$LOCK")
[ -n "$version" ] || { echo "$LOCK pins no faiss-cpu version to match faiss-gpu to" >&2; exit 1; }
pkg="faiss-gpu==$version"
cmd=("$VENV/bin/python" -m pip install -q -c "$LOCK" "$pkg")

if [ "${1:-}" = "--dry-run" ]; then
  echo "${cmd[*]}"
  exit 0
fi
[ -x "$VENV/bin/python" ] || { echo "$VENV: no environment yet; run bash tools/install_env.sh first" >&2; exit 1; }
if [ -f "$MARK" ] && [ "$(cat "$MARK")" = "$pkg" ]; then
  echo "[install] $pkg already in $VENV"
  exit 0
fi
echo "[install] $pkg into $VENV (in front of the base environment's faiss-cpu)"
"${cmd[@]}"
where=$("$VENV/bin/python" -c 'import faiss; print(faiss.__file__)')
case "$where" in
  "$VENV"/*) ;;
  *) echo "import faiss still loads $where, not the faiss-gpu in $VENV" >&2; exit 1 ;;
esac
"$VENV/bin/python" -c 'import faiss; print(f"[install] faiss {faiss.__version__}: {faiss.get_num_gpus()} GPU(s) visible")'
echo "$pkg" > "$MARK"
