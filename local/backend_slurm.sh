#!/usr/bin/env bash
# The Slurm backend of the recipe template (`--backend slurm`; local/backend.sh sources this file):
# every job is one `sbatch` submission, and waiting polls `scontrol` (no accounting database needed).
#
#   id=$(slurm_submit NAME LOG "DEP_ID DEP_ID" -- CMD ARGS...)   # prints the Slurm job id
#   slurm_wait ID...                                             # fails naming each failed job
#
# slurm_submit NAME LOG DEPS -- CMD ARGS...: submits CMD ARGS (run by bash in the submitting
# directory, with the submitting shell's environment) as the job NAME, its stdout and stderr appended
# to LOG, to start once every job of DEPS (space-separated ids; may be empty) has succeeded
# (--dependency=afterok); a dependency that fails cancels it (--kill-on-invalid-dep=yes), so nothing
# waits forever. One node, one task (--ntasks=1 also sets SLURM_NTASKS, without which fairseq's Slurm
# detection fails in a job of several GPUs). Prints the job id.
# slurm_wait ID...: returns when all the jobs have ended, logging each one's id, name, state and log
# path as it ends; when any failed (or was cancelled, timed out, ran out of memory...), dies after the
# others ended, naming each failed job, its log and the log's last lines, and the jobs that were
# cancelled because a job they depend on failed. Interrupted (Ctrl-C, TERM), it cancels the jobs it
# waits for: the recipe holds its workdir lock only while it waits.
#
# Resources, read at each submission (recipes/<corpus>/cmd.sh sets them; empty: the cluster's default):
#   slurm_partition   --partition
#   slurm_gpus        GPUs per job (--gres=gpu:N; 0: none)
#   slurm_cpus        --cpus-per-task
#   slurm_mem         --mem (e.g. 32G)
#   slurm_time        --time (e.g. 1-00:00:00)
#   slurm_extra       more sbatch flags, one string (e.g. "--account=proj --qos=normal")
#   slurm_rules       per-job flags: an array of "GLOB FLAGS..." items; a job whose NAME matches GLOB
#                     gets FLAGS after the ones above (sbatch keeps an option's last value), e.g.
#                     slurm_rules=("kmeans_* --gres=none --cpus-per-task=8"); the template's steps that
#                     use no GPU (data, describe_*, score) ask for none before these rules apply
#   slurm_nproc       training processes per job [the job's GPUs]: when above 1 the job exports
#                     SERKIT_NPROC_PER_NODE, and `serkit train` (SpeechBrain) runs itself under
#                     `torchrun --standalone --nproc_per_node N` (set 2 on a CPU-only cluster to test DDP
#                     with gloo); fairseq trainers take the GPUs they see (distributed_world_size)
#   slurm_poll_s      seconds between two looks at the queue in slurm_wait [5]

# The recipe template's steps that use no GPU (data preparation, per-method summaries, scoring).
_slurm_gpu_free=("data --gres=none" "describe_* --gres=none" "score --gres=none")

# _slurm_need CMD: dies unless the Slurm client CMD is installed.
_slurm_need() {
  command -v "$1" > /dev/null || die "--backend slurm: '$1' not found; run on a Slurm login node (or start a one-node cluster with tools/start_slurm.sh)"
}

slurm_submit() {
  local name=$1 logfile=$2 deps=$3 out id dep after="" rule glob flags
  local -a opts extra cmd rules
  [ "${4:-}" = -- ] || die "slurm_submit $name: expected 'NAME LOG DEPS -- CMD ...', got '$*'"
  shift 4
  [ $# -gt 0 ] || die "slurm_submit $name: no command"
  [[ "$name" =~ ^[A-Za-z0-9_.+-]+$ ]] || die "slurm_submit '$name': a job name of letters, digits and _.+- only"
  _slurm_need sbatch
  for dep in $deps; do
    [[ "$dep" =~ ^[0-9]+(_[0-9]+)?$ ]] || die "slurm_submit $name: dependency '$dep' is not a Slurm job id"
    after+=":$dep"
  done
  mkdir -p "$(dirname "$logfile")"
  logfile=$(realpath -m -- "$logfile")
  # sbatch expands %j, %x, ... in --output: a literal % is written %%
  opts=(--parsable --job-name="$name" --output="${logfile//%/%%}" --open-mode=append --chdir="$PWD"
        --export=ALL --kill-on-invalid-dep=yes --comment="serkit-log:$logfile"
        --nodes=1 --ntasks=1)  # one task; its processes (torchrun, fairseq's spawn) start inside it
  [ -z "$after" ] || opts+=(--dependency="afterok$after")
  [ -z "${slurm_partition:-}" ] || opts+=(--partition="$slurm_partition")
  if [ -n "${slurm_gpus:-}" ] && [ "${slurm_gpus}" != 0 ]; then
    check_int slurm_gpus "$slurm_gpus" 0; opts+=(--gres="gpu:$slurm_gpus")
  fi
  if [ -n "${slurm_cpus:-}" ]; then check_int slurm_cpus "$slurm_cpus" 1; opts+=(--cpus-per-task="$slurm_cpus"); fi
  [ -z "${slurm_mem:-}" ] || opts+=(--mem="$slurm_mem")
  [ -z "${slurm_time:-}" ] || opts+=(--time="$slurm_time")
  read -r -a extra <<< "${slurm_extra:-}"
  opts+=("${extra[@]}")
  rules=("${_slurm_gpu_free[@]}")
  # shellcheck disable=SC2154  # set by cmd.sh, when at all
  if declare -p slurm_rules > /dev/null 2>&1; then rules+=("${slurm_rules[@]}"); fi
  for rule in "${rules[@]}"; do
    read -r glob flags <<< "$rule"
    # shellcheck disable=SC2053  # GLOB is a pattern
    if [[ "$name" == $glob ]]; then read -r -a extra <<< "$flags"; opts+=("${extra[@]}"); fi
  done
  [ -z "${slurm_nproc:-}" ] || check_int slurm_nproc "$slurm_nproc" 1
  cmd=("$@")
  # The job script: bash, so that the quoted command line reads back exactly as given.
  out=$(sbatch "${opts[@]}" 2>&1 <<EOF
#!/usr/bin/env bash
# serkit job $name
printf '==== %s: Slurm job %s (%s) on %s, GPUs: %s\n' "\$(date '+%Y-%m-%d %H:%M:%S')" "\$SLURM_JOB_ID" $(printf %q "$name") "\$(hostname)" "\${CUDA_VISIBLE_DEVICES:-none}"
nproc=${slurm_nproc:-}
if [ -z "\$nproc" ] && [ -n "\${CUDA_VISIBLE_DEVICES:-}" ] && [ "\$CUDA_VISIBLE_DEVICES" != NoDevFiles ]; then
  IFS=, read -r -a gpus <<< "\$CUDA_VISIBLE_DEVICES"; nproc=\${#gpus[@]}
fi
if [ "\${nproc:-1}" -gt 1 ]; then export SERKIT_NPROC_PER_NODE=\$nproc; fi
exec $(printf '%q ' "${cmd[@]}")
EOF
  ) || die "slurm_submit $name: sbatch refused the job: $out"
  id=${out##*$'\n'}; id=${id%%;*}
  [[ "$id" =~ ^[0-9]+$ ]] || die "slurm_submit $name: sbatch printed no job id: $out"
  log "submitted $name as Slurm job $id${after:+ (after ${after:1})}; log $logfile"
  echo "$id"
}

# _slurm_field TEXT KEY: KEY's value in scontrol's KEY=VALUE text; Log: the log path slurm_submit
# recorded in the job's comment (scontrol shows --output with its % patterns expanded), else StdOut.
_slurm_field() {
  local v
  case $2 in
    Log)
      v=$(sed -n 's/^ *Comment=serkit-log:\(.*[^ ]\) *$/\1/p' <<< "$1" | head -n 1)
      [ -n "$v" ] || v=$(sed -n 's/^ *StdOut=//p' <<< "$1" | head -n 1)
      echo "$v" ;;
    *) grep -o "\(^\| \)$2=[^ ]*" <<< "$1" | head -n 1 | sed "s/^ *$2=//" ;;
  esac
}

# _slurm_show ID: `scontrol show job ID`, or nothing once Slurm no longer knows the job.
_slurm_show() { scontrol show job "$1" 2> /dev/null || true; }

slurm_wait() {
  local id info state reason code name logfile listing rc down="" poll=${slurm_poll_s:-5}
  local -a pending=() still failed=() cancelled=()
  local -A shown_state=() queue=()
  [ $# -gt 0 ] || return 0
  _slurm_need scontrol; _slurm_need squeue
  for id in "$@"; do
    [[ "$id" =~ ^[0-9]+(_[0-9]+)?$ ]] || die "slurm_wait: '$id' is not a Slurm job id"
    pending+=("$id")
  done
  log "waiting for ${#pending[@]} Slurm job(s): ${pending[*]} (squeue -j $(IFS=,; echo "${pending[*]}"))"
  # Interrupted: cancel what is left, so no job outlives the recipe that holds the workdir lock.
  trap 'log "interrupted: cancelling Slurm jobs ${pending[*]}"; scancel "${pending[@]}" 2> /dev/null; trap - INT TERM; exit 130' INT TERM
  while [ "${#pending[@]}" -gt 0 ]; do
    still=()
    # one query per look for every job still waited for: id|state|reason|name (finished jobs too,
    # while slurmctld remembers them; an id it forgot is left out)
    queue=()
    rc=0; listing=$(squeue -h --states=all -j "$(IFS=,; echo "${pending[*]}")" -o '%i|%T|%r|%j' 2>&1) || rc=$?
    if [ "$rc" -ne 0 ] && [[ "$listing" != *"Invalid job id"* ]]; then
      # the controller did not answer (busy, restarting): look again later, for up to 10 minutes
      [ -n "$down" ] || { down=$SECONDS; log "squeue failed ($listing); looking again every $poll s"; }
      [ "$((SECONDS - down))" -lt 600 ] \
        || die "squeue has failed for 10 minutes: $listing (the jobs ${pending[*]} may still run; squeue -j $(IFS=,; echo "${pending[*]}"))"
      sleep "$poll"; continue
    fi
    down=""
    while IFS='|' read -r id state reason name; do
      [[ ! "$id" =~ ^[0-9_]+$ ]] || queue[$id]="$state|$reason|$name"
    done <<< "$listing"
    for id in "${pending[@]}"; do
      if [ -n "${queue[$id]:-}" ]; then
        IFS='|' read -r state reason name <<< "${queue[$id]}"
        case $state in
          PENDING|CONFIGURING|RUNNING|COMPLETING|SUSPENDED|REQUEUED|RESIZING|SIGNALING|STAGE_OUT)
            if [ "$reason" != DependencyNeverSatisfied ]; then
              [ "$reason" != None ] || reason=""
              if [ "${shown_state[$id]:-}" != "$state" ]; then
                log "Slurm job $id ($name): $state${reason:+ ($reason)}"; shown_state[$id]=$state
              fi
              still+=("$id"); continue
            fi ;;
        esac
      fi
      # ended (or never to run): the details, once
      info=$(_slurm_show "$id")
      if [ -z "$info" ]; then
        # purged from slurmctld's memory (MinJobAge): accounting, when the cluster has it
        info=$(sacct -n -X -P -j "$id" -o JobName,State,ExitCode 2> /dev/null | head -n 1 || true)
        [ -n "$info" ] || die "Slurm job $id: unknown to scontrol and sacct (finished long ago, or cancelled outside the recipe); re-run the recipe to resume"
        IFS='|' read -r name state code <<< "$info"; state=${state%% *}; reason=""; logfile="(see sbatch --output)"
      else
        state=$(_slurm_field "$info" JobState); reason=$(_slurm_field "$info" Reason)
        code=$(_slurm_field "$info" ExitCode); name=$(_slurm_field "$info" JobName)
        logfile=$(_slurm_field "$info" Log)
      fi
      case $state in
        PENDING|CONFIGURING|RUNNING|COMPLETING|SUSPENDED|REQUEUED|RESIZING|SIGNALING|STAGE_OUT)
          if [ "$state" = PENDING ] && [ "$reason" = DependencyNeverSatisfied ]; then
            # a cluster that keeps such jobs despite --kill-on-invalid-dep: they can never run
            scancel "$id" 2> /dev/null || true
            log "Slurm job $id ($name): CANCELLED, a job it depends on failed; log $logfile"
            cancelled+=("$name"); continue
          fi
          if [ "${shown_state[$id]:-}" != "$state" ]; then
            [ "$reason" != None ] || reason=""
            log "Slurm job $id ($name): $state${reason:+ ($reason)}"; shown_state[$id]=$state
          fi
          still+=("$id") ;;
        COMPLETED)
          log "Slurm job $id ($name): COMPLETED; log $logfile" ;;
        *)
          if [ "$state" = CANCELLED ] && [ "$reason" = DependencyNeverSatisfied ]; then
            log "Slurm job $id ($name): CANCELLED, a job it depends on failed; log $logfile"
            cancelled+=("$name"); continue
          fi
          [ "$reason" != None ] || reason=""
          log "Slurm job $id ($name): $state (exit code $code${reason:+, $reason}); log $logfile; last lines:"
          if [ -f "$logfile" ]; then tail -n 20 "$logfile" >&2; else log "  (no log at $logfile)"; fi
          failed+=("$name (job $id, $state, exit code $code, log $logfile)") ;;
      esac
    done
    pending=("${still[@]}")
    [ "${#pending[@]}" -eq 0 ] || sleep "$poll"
  done
  trap - INT TERM
  if [ "${#failed[@]}" -gt 0 ] || [ "${#cancelled[@]}" -gt 0 ]; then
    local what=""
    [ "${#failed[@]}" -eq 0 ] || what="failed: $(printf '%s; ' "${failed[@]}")"
    [ "${#cancelled[@]}" -eq 0 ] || what+="not run, since a job they depend on failed: ${cancelled[*]}; "
    die "Slurm job(s) ${what}fix the cause and re-run the recipe: it resumes what did not finish"
  fi
  log "all ${#@} Slurm job(s) completed"
}
