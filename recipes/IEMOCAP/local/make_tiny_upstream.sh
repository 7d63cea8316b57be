#!/usr/bin/env bash
# Builds the tiny HuBERT that stands in for hubert_base_ls960.pt on the mini corpus, the way HuBERT's
# own first iteration is made: MFCC k-means labels -> masked-prediction pretraining with fairseq's
# `hubert_pretraining` task. It pretrains on a *separate* mini corpus (another seed: other speakers,
# other sentences), so, like the real HuBERT, it has never heard the evaluation corpus.
#
#   bash local/make_tiny_upstream.sh --out exp/upstream      ->  exp/upstream/tiny_hubert.pt
set -euo pipefail
cd "$(dirname "$0")/.."
. ./path.sh
. ../../local/stage.sh

out=exp/upstream
seed=1000           # the pretraining corpus' seed (the evaluation mini corpus uses 0)
nclusters=25        # MFCC clusters (HuBERT-base used 100 on LibriSpeech)
updates=300         # pretraining updates
nj=2
help_message="Usage: $0 [--out DIR] [--seed N] [--nclusters K] [--updates N] [--nj N]"
. ../../local/parse_options.sh

db=db/mini_pretrain
data=data/pretrain
folds=$data/iemocap_loso5
fold=$folds/fold1
opts="seed=$seed k=$nclusters updates=$updates"
is_done "$out" "$opts" && exit 0

log "tiny HuBERT 1/5: pretraining corpus (seed $seed) -> $db -> $data -> $fold"
serkit mini-corpus iemocap --out "$db" --seed "$seed"
serkit prepare iemocap --root "$db/IEMOCAP_full_release" --out "$data"
# Any fold works: pretraining uses no emotion label, only train (sessions 2-5) and valid audio.
serkit split iemocap_loso5 "$data" --out "$folds"

log "tiny HuBERT 2/5: random initialisation -> $out/tiny_hubert_init.pt"
serkit make-upstream tiny-hubert --out "$out/tiny_hubert_init.pt" --num-labels "$nclusters" --seed 0

log "tiny HuBERT 3/5: MFCC features (39 dims, 50 Hz) of $fold -> $out/mfcc"
serkit dump-features --upstream mfcc --data "$fold" --splits train,valid --out "$out/mfcc" --no-progress

log "tiny HuBERT 4/5: k-means ($nclusters clusters) on MFCC -> $out/km_mfcc"
serkit kmeans fit --feats "$out/mfcc" --fold "$fold" --split train --n-clusters "$nclusters" \
  --out "$out/km_mfcc/km.model"
serkit kmeans apply --model "$out/km_mfcc/km.model" --feats "$out/mfcc" --fold "$fold" \
  --splits train,valid --out "$out/km_mfcc"

log "tiny HuBERT 5/5: fairseq-hydra-train hubert_pretraining, $updates updates -> $out/iter1"
rm -rf "$out/iter1"
fairseq-hydra-train --config-dir "$PWD/conf/fairseq" --config-name hubert_tiny_iter1 \
  task.data="$(realpath "$fold")" task.label_dir="$(realpath "$out/km_mfcc")" \
  optimization.max_update="$updates" checkpoint.save_dir="$(realpath -m "$out/iter1")" \
  hydra.run.dir="$(realpath -m "$out/iter1")" > "$out/iter1.log" 2>&1 \
  || { tail -30 "$out/iter1.log" >&2; die "tiny HuBERT pretraining failed (log: $out/iter1.log)"; }
grep -E "valid.*loss" "$out/iter1.log" | tail -2 >&2 || true
cp "$out/iter1/checkpoint_last.pt" "$out/tiny_hubert.pt.tmp" && mv "$out/tiny_hubert.pt.tmp" "$out/tiny_hubert.pt"
mark_done "$out" "$opts"
log "tiny HuBERT ready: $out/tiny_hubert.pt"
