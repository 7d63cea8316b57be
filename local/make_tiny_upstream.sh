#!/usr/bin/env bash
# Builds the tiny HuBERT that stands in for a real checkpoint (hubert_base_ls960.pt, WavLM, ...) when a
# recipe runs on its mini corpus, the way HuBERT's own first iteration is made: MFCC k-means labels ->
# masked-prediction pretraining with fairseq's `hubert_pretraining` task. It pretrains on a *separate*
# mini IEMOCAP (another seed: other speakers, other sentences, no emotion label used), so, like the
# real HuBERT, it has never heard the corpus it is evaluated on.
#
#   bash local/make_tiny_upstream.sh --workdir recipes/IEMOCAP --out recipes/IEMOCAP/exp/upstream
#   -> OUT/tiny_hubert.pt (its pretraining corpus and data under WORKDIR/db and WORKDIR/data)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
. "$repo/local/stage.sh"
command -v serkit >/dev/null || die "serkit is not on PATH: run 'make install' and source a recipe's path.sh"

workdir=""
out=""
seed=1000           # the pretraining corpus' seed (the evaluation mini corpora use 0)
nclusters=25        # MFCC clusters (HuBERT-base used 100 on LibriSpeech)
updates=300         # pretraining updates (about a minute on 2 CPU cores)
help_message="Usage: $0 --workdir DIR --out DIR [--seed N] [--nclusters K] [--updates N]"
. "$repo/local/parse_options.sh"
[ -n "$workdir" ] && [ -n "$out" ] || die "$help_message"
check_int --seed "$seed"; check_int --nclusters "$nclusters" 2; check_int --updates "$updates" 1
mkdir -p "$workdir" "$out"
workdir=$(realpath "$workdir"); out=$(realpath "$out")

# check_iter1: OUT/iter1 may be removed (a re-run pretrains afresh; fairseq would resume it) only when it
# is this script's: OUT holds local/stage.sh's records (.options/.done), and iter1 only what
# fairseq-hydra-train writes there (checkpoints, hydra_train.log, .hydra/*.yaml).
fairseq_run_only() (
  shopt -s dotglob nullglob
  local f g
  [ -d "$1" ] && [ ! -L "$1" ] || return 1
  for f in "$1"/*; do
    case ${f##*/} in
      checkpoint*.pt|checkpoint*.pt.tmp|crash.pt|hydra_train.log) [ -f "$f" ] && [ ! -L "$f" ] || return 1 ;;
      .hydra)
        [ -d "$f" ] && [ ! -L "$f" ] || return 1
        for g in "$f"/*; do
          case ${g##*/} in config.yaml|hydra.yaml|overrides.yaml) [ -f "$g" ] && [ ! -L "$g" ] || return 1 ;;
            *) return 1 ;; esac
        done ;;
      *) return 1 ;;
    esac
  done
)
check_iter1() {
  [ -e "$out/iter1" ] || [ -L "$out/iter1" ] || return 0
  if { [ -f "$out/.options" ] || [ -f "$out/.done" ]; } && fairseq_run_only "$out/iter1"; then return 0; fi
  die "--out $out: $out/iter1 exists and is not this script's pretraining output; serkit never removes what it did not write. Nothing was changed: choose another --out, or move $out/iter1 away yourself"
}
check_iter1

db=$workdir/db/mini_pretrain
data=$workdir/data/pretrain
fold=$data/iemocap_loso5/fold1
opts="seed=$seed k=$nclusters updates=$updates"
is_done "$out" "$opts" "$repo/plugins/serkit/conf/fairseq/hubert_tiny_iter1.yaml" && exit 0

log "tiny HuBERT 1/5: pretraining corpus (seed $seed) -> $db -> $data -> $fold"
serkit mini-corpus iemocap --out "$db" --seed "$seed"
serkit prepare iemocap --root "$db/IEMOCAP_full_release" --out "$data"
# Any fold works: pretraining uses no emotion label, only the train (sessions 2-5) and valid audio.
serkit split iemocap_loso5 "$data" --out "$data/iemocap_loso5"

log "tiny HuBERT 2/5: random initialisation -> $out/tiny_hubert_init.pt"
serkit make-upstream tiny-hubert --out "$out/tiny_hubert_init.pt" --num-labels "$nclusters" --seed 0

log "tiny HuBERT 3/5: MFCC features (39 dims, 50 Hz) of $fold -> $out/mfcc"
serkit dump-features --upstream mfcc --data "$fold" --splits train,valid --out "$out/mfcc" --no-progress

log "tiny HuBERT 4/5: k-means ($nclusters clusters) on MFCC -> $out/km_mfcc"
serkit kmeans fit --feats "$out/mfcc" --fold "$fold" --split train --n-clusters "$nclusters" \
  --out "$out/km_mfcc/km.model"
serkit kmeans apply --model "$out/km_mfcc/km.model" --feats "$out/mfcc" --fold "$fold" \
  --splits train,valid --out "$out/km_mfcc"

log "tiny HuBERT 5/5: fairseq-hydra-train hubert_pretraining, $updates updates (progress every 25) -> $out/iter1"
check_iter1
rm -rf "$out/iter1"
# Reproducible (two builds used to differ in every weight): serkit's user dir seeds HuBERT's masks,
# which fairseq 0.12 draws from unseeded generators; no prefetch thread (data_buffer_size=0), since
# its random crops draw from numpy's global generator in an order that depends on thread timing.
user_dir=$(serkit_user_dir) || exit 1
# pretraining_progress: fairseq's output (kept whole in iter1.log) as one stage line every log_interval
# (25) updates and after each validation, so the minutes of pretraining are not silent.
pretraining_progress() {
  local line
  while IFS= read -r line; do
    if [[ "$line" =~ \[train_inner\].*\ loss=([0-9.]+).*num_updates=([0-9]+) ]]; then
      log "  pretraining: update ${BASH_REMATCH[2]}/$updates, loss ${BASH_REMATCH[1]}"
    elif [[ "$line" =~ valid\ on\ \'valid\'.*\|\ loss\ ([0-9.]+).*correct_m_0\ ([0-9.]+) ]]; then
      log "  pretraining: validation loss ${BASH_REMATCH[1]}, masked-frame accuracy ${BASH_REMATCH[2]}"
    fi
  done
}
# Paths become quoted Hydra values, so spaces, commas, '=', brackets or quotes in them are data.
fairseq-hydra-train --config-dir "$repo/plugins/serkit/conf/fairseq" --config-name hubert_tiny_iter1 \
  common.user_dir="$(hydra_value "$user_dir")" dataset.data_buffer_size=0 \
  task.data="$(hydra_value "$fold")" task.label_dir="$(hydra_value "$out/km_mfcc")" optimization.max_update="$updates" \
  checkpoint.save_dir="$(hydra_value "$out/iter1")" hydra.run.dir="$(hydra_value "$out/iter1")" 2>&1 \
  | tee "$out/iter1.log" | pretraining_progress \
  || { tail -30 "$out/iter1.log" >&2; die "tiny HuBERT pretraining failed (log: $out/iter1.log)"; }
cp "$out/iter1/checkpoint_last.pt" "$out/tiny_hubert.pt.tmp" && mv "$out/tiny_hubert.pt.tmp" "$out/tiny_hubert.pt"
mark_done "$out"
log "tiny HuBERT ready: $out/tiny_hubert.pt"
