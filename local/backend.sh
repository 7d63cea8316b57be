#!/usr/bin/env bash
# How the recipe template (local/ser.sh) runs its jobs: one call per job, the same for every backend.
#
#   . local/backend.sh                     # after local/stage.sh; reads $backend (local | slurm)
#   id=$(backend_submit teacher_fold1 exp/x/log/jobs/teacher_fold1.log "$dep1 $dep2" -- bash run.sh ...)
#   backend_wait "$id" ...
#
# backend_submit NAME LOG DEPS -- CMD ARGS...: runs CMD as the job NAME, its output appended to LOG,
# after the jobs DEPS (a space-separated list of ids printed by earlier calls; may be empty) succeeded,
# and prints the job's id. backend_wait ID...: returns when those jobs have ended, failing when one
# failed.
#
# local (the default): CMD runs now, in the foreground: its stdout and stderr go where this shell's go
# (so the console shows what it showed before the template ran stages as jobs) and are appended to LOG;
# DEPS have already finished, since every earlier job did; a failure stops the recipe naming NAME,
# LOG and the log's last 20 lines. backend_wait has nothing to wait for.
# slurm: backend_submit and backend_wait are slurm_submit and slurm_wait of local/backend_slurm.sh,
# called with the same arguments, sourced only when --backend slurm is asked for.

# The console's stdout, for the local jobs' output: backend_submit's own stdout is the job id.
exec {_serkit_console_fd}>&1

# _backend_local_run LOG CMD...: CMD with stdout and stderr each where they were, both appended to LOG.
_backend_local_run() {
  local logfile=$1; shift
  # fd 3: this shell's stdout; the inner pipe carries CMD's stderr through tee back to stderr
  { { "$@" 2>&1 1>&3 3>&- | tee -a "$logfile" >&2 3>&-; exit "${PIPESTATUS[0]}"; } 3>&1 | tee -a "$logfile"; }
}

backend_local_submit() {
  local name=$1 logfile=$2 rc=0
  [ "${4:-}" = -- ] || die "backend_submit $name: expected 'NAME LOG DEPS -- CMD ...', got '$*'"
  shift 4
  [ $# -gt 0 ] || die "backend_submit $name: no command"
  mkdir -p "$(dirname "$logfile")"
  ( set -o pipefail; _backend_local_run "$logfile" "$@" ) >&"$_serkit_console_fd" || rc=$?
  if [ "$rc" -ne 0 ]; then
    log "job $name FAILED (exit $rc); its log: $logfile; last 20 lines:"
    tail -n 20 "$logfile" >&2
    die "job $name failed (exit $rc), log $logfile"
  fi
  echo "local:$name"
}

backend_local_wait() { :; }

# backend_submit / backend_wait: the chosen backend's (see the top of this file).
backend_submit() {
  case "${backend:-local}" in
    local) backend_local_submit "$@" ;;
    slurm) slurm_submit "$@" ;;
    *) die "--backend $backend: local or slurm" ;;
  esac
}
backend_wait() {
  case "${backend:-local}" in
    local) backend_local_wait "$@" ;;
    slurm) slurm_wait "$@" ;;
    *) die "--backend $backend: local or slurm" ;;
  esac
}

# backend_init DIR: loads the backend $backend needs; DIR is the repository's local/ folder.
backend_init() {
  case "${backend:-local}" in
    local) ;;
    slurm)
      [ -f "$1/backend_slurm.sh" ] || die "--backend slurm needs local/backend_slurm.sh ($1/backend_slurm.sh is missing)"
      # shellcheck source=/dev/null
      . "$1/backend_slurm.sh"
      { declare -F slurm_submit && declare -F slurm_wait; } > /dev/null ||
        die "$1/backend_slurm.sh defines no slurm_submit/slurm_wait"
      ;;
    *) die "--backend $backend: local or slurm" ;;
  esac
}
