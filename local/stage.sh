#!/usr/bin/env bash
# Stage helpers shared by the recipes: logging, stage selection and `.done` markers.
#
#   . local/stage.sh
#   if stage_selected 2; then
#     log "Stage 2: k-means pseudo labels: $feats -> $labels"
#     if ! is_done "$labels" "k=$nclusters layer=$layer"; then
#       ... write into $labels ...
#       mark_done "$labels" "k=$nclusters layer=$layer"
#     fi
#   fi
#
# A marker `<dir>/.done` holds the options that produced <dir>: the same options skip the work,
# different ones move the old output aside and re-run, and a crashed run (no marker) is never taken
# for a finished one: re-running it with the same options resumes it.

log() { echo "$(date '+%Y-%m-%d %H:%M:%S') (${0##*/}) $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# serkit_user_dir: the fairseq user-dir (plugins/serkit_fairseq) of the serkit that is installed, found
# without importing it, so a recipe copied out of the repository (or serkit installed with pip) finds it.
serkit_user_dir() {
  python -c 'import importlib.util as u, os; s = u.find_spec("serkit_fairseq"); print(os.path.dirname(s.origin))' \
    || die "serkit_fairseq is not importable: run 'make install' (or pip install serkit)"
}

# stage_selected N: true when stage N lies in [stage, stop_stage].
stage_selected() { [ "$1" -ge "${stage:-0}" ] && [ "$1" -le "${stop_stage:-100}" ]; }

_done_file() { echo "$1/.done"; }

# is_done DIR OPTIONS: true when DIR was completed with exactly OPTIONS. Otherwise DIR is about to be
# (re)made with OPTIONS: output of a run with other options (finished or not) is moved aside to
# DIR.prev-<time> so it can neither be mistaken for the new one nor be resumed from, and OPTIONS are
# recorded in DIR/.options so that a killed run with the same options resumes.
is_done() {
  local dir=$1 opts=$2 f recorded=""
  f=$(_done_file "$dir")
  if [ -f "$f" ] && [ "$(cat "$f")" = "$opts" ]; then
    log "  skip: $dir is done with the same options (remove $f to redo)"
    return 0
  fi
  if [ -f "$f" ]; then recorded=$(cat "$f"); elif [ -f "$dir/.options" ]; then recorded=$(cat "$dir/.options"); fi
  if [ -n "$recorded" ] && [ "$recorded" != "$opts" ]; then
    local old; old="$dir.prev-$(date +%Y%m%d-%H%M%S)"
    log "  options changed for $dir (was: $recorded): moving the old output to $old"
    mv "$dir" "$old"
  fi
  mkdir -p "$dir"
  printf '%s' "$opts" > "$dir/.options"
  return 1
}

mark_done() { mkdir -p "$1"; printf '%s' "$2" > "$(_done_file "$1").tmp" && mv "$(_done_file "$1").tmp" "$(_done_file "$1")"; }

# timed NAME CMD...: runs CMD, appends "NAME<TAB>seconds" to $timing_file (if set).
timed() {
  local name=$1; shift
  local t0; t0=$(date +%s)
  "$@"
  local rc=$?
  if [ -n "${timing_file:-}" ]; then
    printf '%s\t%s\n' "$name" "$(( $(date +%s) - t0 ))" >> "$timing_file"
  fi
  return $rc
}

# folds_of SPEC NFOLDS: "all" -> "1 2 ... N", "1,3" -> "1 3".
folds_of() {
  if [ "$1" = all ]; then seq 1 "$2" | tr '\n' ' '; else echo "${1//,/ }"; fi
}

# logged LOGFILE CMD...: runs CMD with its output appended to LOGFILE, so the console keeps to the
# stage lines; on failure shows the end of the log and where it is.
logged() {
  local logfile=$1 rc=0
  shift
  mkdir -p "$(dirname "$logfile")"
  "$@" >> "$logfile" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ]; then
    log "FAILED (exit $rc): $*"
    tail -n 25 "$logfile" >&2
    log "full log: $logfile"
  fi
  return "$rc"
}
