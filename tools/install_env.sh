#!/usr/bin/env bash
# Builds serkit's Python environment from the pinned files in requirements/.
#
#   bash tools/install_env.sh            # what `make install` runs
#
# Two layers, so that every clone and CI run does not rebuild 7 GB of CUDA-enabled torch:
#   1. a base environment with the pinned third-party set, kept in
#      ${SERKIT_ENV_CACHE:-~/.cache/serkit/envs}/<hash of requirements/ and this script>;
#      a fresh machine builds it with exactly these steps;
#   2. ./.venv, a light virtual environment that sees the base (a .pth file) and holds serkit
#      installed in editable mode, plus the base's command-line tools re-pointed at ./.venv.
# Re-running is cheap: nothing is rebuilt unless requirements/ or this script changed.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
REQ="$ROOT/requirements"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
VENV="$ROOT/.venv"

"$PYTHON" - <<'PY' || { echo "serkit needs Python 3.10 or 3.11 (fairseq 0.12 does not build on 3.12); set PYTHON=..." >&2; exit 1; }
import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 11) else 1)
PY

hash=$(cat "$REQ"/build.txt "$REQ"/main.txt "$REQ"/extra.txt "$REQ"/lock.txt "$0" \
       <("$PYTHON" -c 'import sys; print(sys.version)') | sha256sum | cut -c1-16)
CACHE="${SERKIT_ENV_CACHE:-$HOME/.cache/serkit/envs}"
BASE="$CACHE/$hash"
mkdir -p "$CACHE"

log() { echo "[install $(date +%H:%M:%S)] $*"; }

build_base() {
  # The venv is built in place (venvs are not relocatable); .complete marks a finished build.
  rm -rf "$BASE"
  log "building base environment $BASE (about 4 minutes from an empty pip cache)"
  "$PYTHON" -m venv "$BASE"
  local pip="$BASE/bin/python -m pip"
  # Step 1: torch first; step 2 compiles fairseq-fixed's extensions against that torch, so no
  # build isolation and no cached wheel that may have been built against another torch.
  $pip install -q -r "$REQ/build.txt" -c "$REQ/lock.txt"
  $pip install -q --no-cache-dir --no-build-isolation -r "$REQ/main.txt"
  $pip install -q -r "$REQ/extra.txt"
  $pip check
  date -u +%FT%TZ > "$BASE/.complete"
}

(
  flock 9
  if [ ! -f "$BASE/.complete" ]; then build_base; else log "base environment up to date: $BASE"; fi
) 9>"$CACHE/.lock-$hash"

if [ -f "$VENV/.serkit-env" ] && [ "$(cat "$VENV/.serkit-env")" = "$hash" ] \
   && "$VENV/bin/python" -c 'import serkit' 2>/dev/null; then
  log ".venv up to date"
  exit 0
fi

log "creating .venv on top of the base environment"
rm -rf "$VENV"
"$PYTHON" -m venv --without-pip "$VENV"
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
base_site=$("$BASE/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# addsitedir (not a bare path) so that the base's own .pth files are processed too.
echo "import site; site.addsitedir('$base_site')" > "$site/_serkit_base_env.pth"
"$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$ROOT"

# The base's command-line tools (fairseq-hydra-train, pytest, ruff, ...) must run with .venv's
# interpreter, which sees serkit: copy the Python scripts with the shebang re-pointed, link binaries.
for f in "$BASE"/bin/*; do
  name=$(basename "$f")
  case "$name" in python*|pip*|activate*|Activate*) continue ;; esac
  [ -e "$VENV/bin/$name" ] && continue
  if head -n1 "$f" | grep -q "^#!$BASE/bin/python"; then
    sed "1s|^#!.*|#!$VENV/bin/python|" "$f" > "$VENV/bin/$name"
    chmod +x "$VENV/bin/$name"
  else
    ln -s "$f" "$VENV/bin/$name"
  fi
done
echo "$hash" > "$VENV/.serkit-env"
log "ready: $VENV (base $BASE)"
