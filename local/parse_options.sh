#!/usr/bin/env bash
# Parses --long-option value pairs into the shell variables of the same name (dashes -> underscores).
#
# Source it after declaring defaults and a `help_message`:
#     stage=0; nclusters=50
#     . local/parse_options.sh
#     bash run.sh --stage 3 --nclusters 100
# Only variables that already exist can be set, so a typo fails instead of being ignored.
# `--help` prints $help_message; `--config FILE` sources FILE first (key=value lines).

while true; do
  [ -z "${1:-}" ] && break
  case "$1" in
    --help|-h)
      printf '%s\n' "${help_message:-no help}"; exit 0 ;;
    --config)
      [ -f "$2" ] || { echo "$0: --config $2: no such file" >&2; exit 1; }
      # shellcheck disable=SC1090
      . "$2"; shift 2 ;;
    --*=*)
      echo "$0: write '--option value', not '--option=value': $1" >&2; exit 1 ;;
    --*)
      name=$(echo "${1#--}" | tr - _)
      if [ -z "${!name+set}" ]; then
        echo "$0: unknown option $1 (see $0 --help)" >&2; exit 1
      fi
      [ $# -ge 2 ] || { echo "$0: option $1 needs a value" >&2; exit 1; }
      printf -v "$name" '%s' "$2"
      shift 2 ;;
    *) break ;;
  esac
done
true
