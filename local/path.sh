#!/usr/bin/env bash
# Sourced by every recipe's path.sh: the repo's environment first on PATH (made by `make install`),
# unbuffered Python logs, and SERKIT_ROOT for the fairseq user-dir.
_serkit_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -x "$_serkit_root/.venv/bin/python" ]; then
  export PATH="$_serkit_root/.venv/bin:$PATH"
fi
export PYTHONUNBUFFERED=1
export SERKIT_ROOT="$_serkit_root"
command -v serkit >/dev/null || { echo "serkit is not installed: run 'make install' in $_serkit_root" >&2; exit 1; }
