#!/usr/bin/env bash
# Stage helpers shared by the recipes: logging, option checks, the workdir lock, stage selection and
# `.done` records.
#
#   . local/stage.sh
#   lock_workdir "$workdir"
#   if stage_selected 2; then
#     log "Stage 2: k-means pseudo labels: $feats -> $labels"
#     if ! is_done "$labels" "k=$nclusters layer=$layer" "$feats" "$fold"; then
#       ... write into $labels ...
#       mark_done "$labels"
#     fi
#   fi
#
# A record `<dir>/.done` holds the identity of what produced <dir>: the options and the identity of
# every input named after them. The same identity skips the work; a different one (an option, or any
# input, changed) moves the old output aside and re-runs; a crashed run (no record) is never taken for
# a finished one: re-running it with the same identity resumes it. An input that is (or lies inside) a
# stage's output is identified by that stage's own record, which ends with a line saying when it
# finished, so re-running a stage, for whatever reason, invalidates every stage downstream of it.

# log MESSAGE: a stage line on the console (stderr) and, once log_to named it, in the experiment's
# stage log (SERKIT_RUN_LOG, exported, so the scripts a recipe runs add theirs); lines logged before
# that are kept and written to it first.
_serkit_log_early=()
log() {
  local line; line="$(date '+%Y-%m-%d %H:%M:%S') (${0##*/}) $*"
  printf '%s\n' "$line" >&2
  # a stage log that cannot be written (its directory removed) never stops the run
  if [ -n "${SERKIT_RUN_LOG:-}" ]; then printf '%s\n' "$line" 2> /dev/null >> "$SERKIT_RUN_LOG" || true
  else _serkit_log_early+=("$line"); fi
}
# log_to FILE: from now on log's lines are appended to FILE too, after a line with the command that
# runs and the lines logged so far.
log_to() {
  local args=()
  mkdir -p "$(dirname "$1")"
  export SERKIT_RUN_LOG; SERKIT_RUN_LOG=$(realpath -m -- "$1")
  if [ -r /proc/$$/cmdline ]; then mapfile -d '' -t args < /proc/$$/cmdline; else args=("$0"); fi
  {
    printf '==== %s, pid %s in %s: %s\n' "$(date '+%Y-%m-%d %H:%M:%S')" "$$" "$PWD" "$(printf '%q ' "${args[@]}")"
    [ "${#_serkit_log_early[@]}" -eq 0 ] || printf '%s\n' "${_serkit_log_early[@]}"
  } >> "$SERKIT_RUN_LOG"
  _serkit_log_early=()
  log "stage log: $SERKIT_RUN_LOG"
}
die() { log "ERROR: $*"; exit 1; }

# serkit_user_dir: the fairseq user-dir (plugins/serkit_fairseq) of the serkit that is installed, found
# without importing it, so a recipe copied out of the repository (or serkit installed with pip) finds it.
serkit_user_dir() {
  python -c 'import importlib.util as u, os; s = u.find_spec("serkit_fairseq"); print(os.path.dirname(s.origin))' \
    || die "serkit_fairseq is not importable: run 'make install' (or pip install serkit)"
}

############################################################################### option checks
# Each dies with a message naming the option, so a bad value fails before any stage runs.

# check_int OPTION VALUE [MIN]: VALUE is a whole number >= MIN (default 0).
check_int() {
  [[ "$2" =~ ^[0-9]+$ ]] || die "$1 $2: expected a whole number${3:+ >= $3}"
  [ "$((10#$2))" -ge "${3:-0}" ] || die "$1 $2: expected a whole number >= ${3:-0}"
}

# check_int_list OPTION VALUE: a comma list of whole numbers, e.g. 4,8,12.
check_int_list() { [[ "$2" =~ ^[0-9]+(,[0-9]+)*$ ]] || die "$1 $2: expected a comma list of whole numbers, e.g. 1,3"; }

# check_number OPTION VALUE: a non-negative decimal number (1e-4, 0.25, 3).
check_number() {
  [[ "$2" =~ ^([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$ ]] || die "$1 $2: expected a number, e.g. 0.001 or 1e-3"
}

# check_choice OPTION VALUE CHOICE...: VALUE is one of the CHOICEs.
check_choice() {
  local opt=$1 value=$2 c; shift 2
  for c in "$@"; do [ "$value" = "$c" ] && return 0; done
  die "$opt $value: choose one of: $*"
}

# check_choice_list OPTION LIST CHOICE...: every item of the comma LIST is one of the CHOICEs.
check_choice_list() {
  local opt=$1 list=$2 item c ok; shift 2
  [ -n "$list" ] || die "$opt: give at least one of: $*"
  for item in ${list//,/ }; do
    ok=false; for c in "$@"; do [ "$item" = "$c" ] && ok=true; done
    $ok || die "$opt $item: unknown (choose from: $*)"
  done
}

# check_device VALUE: auto | cpu | cuda | cuda:N.
check_device() { [[ "$1" =~ ^(auto|cpu|cuda|cuda:[0-9]+)$ ]] || die "--device $1: choose auto, cpu, cuda or cuda:N"; }

# check_stages STAGE STOP_STAGE LAST: --stage and --stop-stage are stage numbers of a recipe whose
# stages are 0..LAST, in order.
check_stages() {
  check_int --stage "$1"; check_int --stop-stage "$2"
  [ "$1" -le "$3" ] || die "--stage $1: this recipe's stages are 0..$3"
  [ "$1" -le "$2" ] || die "--stage $1 comes after --stop-stage $2: nothing to run"
}

# check_folds_spec SPEC: "all" or a comma list of fold numbers (>= 1); checked against the split later.
check_folds_spec() {
  [ "$1" = all ] || [[ "$1" =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || die "--folds $1: 'all' or a comma list of fold numbers, e.g. 1,3"
}

############################################################################### the workdir lock
# lock_workdir DIR: an exclusive lock on DIR/.run.lock (flock), held until this process and the
# commands it started have exited. A second run on the same DIR fails at once, naming the holder.
# The holder exports SERKIT_LOCK_TOKEN (a random word, also written into the lock file): a job it
# started (local/backend.sh) that locks the same DIR finds its token there and shares the lock.
lock_workdir() {
  local dir=$1 lock holder="" args=()
  command -v flock > /dev/null || die "flock(1) is needed to lock $dir (util-linux)"
  mkdir -p "$dir"
  lock=$dir/.run.lock
  if [ -n "${SERKIT_LOCK_TOKEN:-}" ] && grep -qx "token $SERKIT_LOCK_TOKEN" "$lock" 2> /dev/null; then
    return 0  # a job of the run that holds the lock
  fi
  # opened for appending: a run that does not get the lock must not erase the holder's description
  exec {_serkit_lock_fd}>> "$lock" || die "$lock: cannot open the lock file"
  if ! flock -n "$_serkit_lock_fd"; then
    holder=$(head -n 1 "$lock" 2> /dev/null)
    die "$dir is in use by another run (${holder:-holder not written yet}); wait for it to finish, or use another --workdir. (The lock is $lock; it is released when that run exits.)"
  fi
  if [ -r /proc/$$/cmdline ]; then mapfile -d '' -t args < /proc/$$/cmdline; else args=("$0"); fi
  export SERKIT_LOCK_TOKEN; SERKIT_LOCK_TOKEN=$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')
  printf 'pid %s on %s, started %s: %s\ntoken %s\n' "$$" "$(hostname)" "$(date '+%Y-%m-%d %H:%M:%S')" \
    "$(printf '%q ' "${args[@]}")" "$SERKIT_LOCK_TOKEN" > "$lock"
}

############################################################################### stages and records
# stage_selected N: true when stage N lies in [stage, stop_stage].
stage_selected() { [ "$1" -ge "${stage:-0}" ] && [ "$1" -le "${stop_stage:-100}" ]; }

_done_file() { echo "$1/.done"; }
# The identity each is_done in this shell found missing, for mark_done: DIR -> identity.
declare -gA _serkit_started=()

# Files up to this size are identified by their content; bigger ones (checkpoints) by size and mtime.
SERKIT_HASH_MAX_BYTES=${SERKIT_HASH_MAX_BYTES:-67108864}

# input_identity PATH: one word that changes whenever PATH's content does.
#   - PATH is, or lies inside, a stage output (an ancestor directory holding .done): that record's hash
#   - a file: the md5 of its content (size and mtime above SERKIT_HASH_MAX_BYTES)
#   - a directory: the md5 of its listing (every file's relative path, size and mtime)
#   - missing: "missing"
input_identity() {
  local p d size
  p=$(realpath -m -- "$1")
  d=$p
  while :; do
    # a stage record of these helpers (it ends with "finished: ..."), not a .done file of another tool
    if [ -f "$d/.done" ] && grep -q "^finished: " "$d/.done"; then echo "record:$(md5sum < "$d/.done" | cut -c1-16)"; return; fi
    [ "$d" != / ] || break
    d=$(dirname -- "$d")
  done
  if [ -f "$p" ]; then
    size=$(stat -L -c %s -- "$p")
    if [ "$size" -le "$SERKIT_HASH_MAX_BYTES" ]; then
      echo "md5:$(md5sum < "$p" | cut -c1-16)"
    else
      echo "size:$size,mtime:$(date -r "$p" +%s.%N)"
    fi
  elif [ -d "$p" ]; then
    echo "listing:$(cd -- "$p" && find -L . -printf '%P\t%s\t%T@\n' 2> /dev/null | LC_ALL=C sort | md5sum | cut -c1-16)"
  else
    echo missing
  fi
}

# stage_identity OPTIONS INPUT...: the text a .done record holds (without its "finished" line).
stage_identity() {
  local opts=$1 p; shift
  printf 'options: %s\n' "$opts"
  for p in "$@"; do
    [ -n "$p" ] || continue
    printf 'input: %s %s\n' "$(realpath -m -- "$p")" "$(input_identity "$p")"
  done
}

# _recorded DIR: the identity recorded in DIR (finished: .done; started: .options), or nothing.
_recorded() {
  if [ -f "$1/.done" ]; then grep -v '^finished: ' "$1/.done" || true; elif [ -f "$1/.options" ]; then cat "$1/.options"; fi
}

# is_done DIR OPTIONS [INPUT...]: true when DIR was completed with exactly OPTIONS from the same
# INPUTs (files or directories; see input_identity). Otherwise DIR is about to be (re)made: output of
# a run with another identity (finished or not) is moved aside to DIR.prev-<time> so it can neither be
# mistaken for the new one nor be resumed from, and the identity is recorded in DIR/.options so that a
# killed run with the same identity resumes, and mark_done records it.
is_done() {
  local dir=$1 identity recorded what
  shift
  identity=$(stage_identity "$@")
  recorded=$(_recorded "$dir")
  if [ -f "$dir/.done" ] && [ "$recorded" = "$identity" ]; then
    log "  skip: $dir is done with the same options and inputs (remove $(_done_file "$dir") to redo)"
    return 0
  fi
  if [ -n "$recorded" ] && [ "$recorded" != "$identity" ]; then
    local old; old="$dir.prev-$(date +%Y%m%d-%H%M%S)"
    if [ "$(head -n 1 <<< "$recorded")" != "$(head -n 1 <<< "$identity")" ]; then
      what="options changed for $dir ($(head -n 1 <<< "$recorded" | cut -c10-) -> $(head -n 1 <<< "$identity" | cut -c10-))"
    else
      what="inputs changed for $dir ($(comm -13 <(sort <<< "$recorded") <(sort <<< "$identity") \
        | sed -E 's/^input: (.*) [^ ]*$/\1/' | paste -sd, -))"
    fi
    log "  $what: moving the old output to $old"
    mv -- "$dir" "$old"
  fi
  mkdir -p "$dir"
  printf '%s\n' "$identity" > "$dir/.options"
  _serkit_started[$dir]=$identity
  return 1
}

# mark_done DIR [OPTIONS [INPUT...]]: DIR is complete. Records the identity is_done took when the
# work started (kept in memory and in DIR/.options, which a tool replacing DIR removes; without
# either, OPTIONS and INPUTs), and when it finished.
mark_done() {
  local dir=$1 f identity; shift
  mkdir -p "$dir"
  f=$(_done_file "$dir")
  if [ -n "${_serkit_started[$dir]:-}" ]; then identity=${_serkit_started[$dir]}
  elif [ -f "$dir/.options" ]; then identity=$(cat "$dir/.options")
  else identity=$(stage_identity "${1:-}" "${@:2}"); fi
  printf '%s\nfinished: %s on %s (pid %s)\n' "$identity" "$(date '+%Y-%m-%d %H:%M:%S.%N')" "$(hostname)" "$$" \
    > "$f.tmp" && mv "$f.tmp" "$f"
}

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


# split_folds SPLIT_DIR SPEC: the fold numbers to run, read from the folds `serkit split` wrote
# (SPLIT_DIR/split.json), so a protocol option that changes the fold count is followed:
# "all" -> every fold, "1,3" -> "1 3" after checking that those folds exist.
split_folds() { serkit recipe folds "$1" "$2" || die "$1: cannot list folds '$2'"; }

# json_value FILE KEY: FILE's top-level KEY (paths travel as arguments, never inside Python source).
json_value() { serkit recipe json-value "$1" "$2" || die "$1: cannot read key '$2'"; }

# write_run_json FILE KEY=VALUE...: the run's description for `serkit score`, written atomically.
write_run_json() { serkit recipe run-json "$@"; }

# upstream_num_layers CKPT: the number of transformer layers of an upstream checkpoint (dies with
# the loader's message when CKPT is not one).
upstream_num_layers() { serkit recipe num-layers "$1" || die "--upstream $1: not an upstream checkpoint serkit can load"; }

# hydra_value VALUE: VALUE as a Hydra 1.3 override value that parses back to exactly VALUE (a quoted
# string: quotes escaped, backslashes before a quote or the end doubled), whatever characters a path
# holds (spaces, non-ASCII, ( ) , = ' "). OmegaConf resolves ${...} even when escaped once fairseq
# copies its config, so a value holding '${' is refused.
hydra_value() { serkit recipe hydra-value "$1" || die "'$1': cannot be passed to fairseq as a Hydra value"; }

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
