#!/usr/bin/env bash
# IEMOCAP recipe: FLEA end to end (pseudo-emotion labels -> HuBERT continued pretraining ->
# finetuning) and the ShiftSER / BAS / MFSN heads, on leak-free folds, scored the same way.
#
# Stages (each logs what it reads and writes, records its options in a .done marker and resumes):
#   0  data: prepare the corpus, write the folds (and, on the mini corpus, build the tiny HuBERT)
#   1  teacher: finetune the upstream for SER per fold, dump its layer --layer
#   2  k-means pseudo labels (faiss) fitted on the fold's training frames, labels for all splits
#   3  HuBERT continued pretraining on the pseudo labels (fairseq-hydra-train + serkit user-dir)
#   4  finetune: the continued model with attention/mean pooling (FLEA), or any head (--method)
#   5  score every run and print one table
set -euo pipefail
cd "$(dirname "$0")"
. ./path.sh
. ./db.sh
. ../../local/stage.sh

stage=0
stop_stage=5
root=""               # corpus directory (IEMOCAP_full_release); default: db.sh, else the mini corpus
upstream=""           # fairseq HuBERT checkpoint, e.g. hubert_base_ls960.pt; default on the mini corpus: tiny HuBERT
protocol=iemocap_loso5
valid=stratified      # iemocap_loso5 validation: stratified (10 % of training sessions) | speaker
folds=all             # all | comma list, e.g. 1,3
method=""             # default flea (mini corpus: flea,shiftcnn); comma list of: flea linear ffn cnn shiftcnn transformer shiftformer lstm shiftlstm bas mfsn
setting=featex        # heads: featex (frozen upstream, weighted layer sum) | finetune (upstream transformer trained)
layer=9               # FLEA: teacher layer clustered (the paper's best: 9)
nclusters=50          # FLEA: k-means clusters (the paper's best: 50)
pooling=both          # FLEA finetune pooling: attention | mean | both
transductive=false    # true: fit k-means on all audio of the fold, held-out session included (the paper's setting)
tapt_labels=""        # FLEA: a directory of k-means labels (<split>.km, dict.km.txt) to continue pretraining on before the teacher (TAPT)
selection=valid       # valid | paper (ShiftSER: best test epoch; FLEA: (valid+test)/2), always named in RESULTS
teacher_epochs=""     # default 40 (mini corpus: 8)
finetune_epochs=""    # default 40 (mini corpus: 8)
head_epochs=""        # default 100 (mini corpus: 15)
cpt_updates=""        # default 20000 (mini corpus: 150)
cpt_config=""         # default conf/fairseq/cpt_hubert_base.yaml (mini corpus: cpt_hubert_tiny.yaml)
finetune_lr=""        # teacher and FLEA finetune learning rate: default conf/flea.yaml's 1e-4 (mini corpus: 1e-3)
device=auto           # auto | cpu | cuda
tag=""                # experiment directory name (default: the protocol)
head_overrides=""     # extra yaml overrides for the heads, e.g. "--batch_size 16 --lr 0.001"

help_message=$(cat <<EOM
Usage: $0 [options]
Runs the IEMOCAP recipe; with no corpus in db.sh and no --root it builds the mini corpus and a
tiny HuBERT and runs end to end on CPU (that is 'make demo').

Options (default in brackets):
  --stage N / --stop-stage M   run stages N..M [$stage..$stop_stage]
  --root DIR          IEMOCAP_full_release directory [db.sh: \${IEMOCAP:-none}]
  --upstream FILE     fairseq HuBERT checkpoint (e.g. hubert_base_ls960.pt) [tiny HuBERT on the mini corpus]
  --protocol NAME     iemocap_loso5 | iemocap_loso10 [$protocol]
  --valid KIND        iemocap_loso5 validation set: stratified | speaker [$valid]
  --folds LIST        all | 1,3,... [$folds]
  --method LIST       flea and/or heads: linear ffn cnn shiftcnn transformer shiftformer lstm shiftlstm bas mfsn
                      [flea; mini corpus: flea,shiftcnn]
  --setting KIND      heads: featex | finetune [$setting]
  --layer L           FLEA teacher layer to cluster [$layer]
  --nclusters K       FLEA k-means clusters [$nclusters]
  --pooling KIND      FLEA finetune pooling: attention | mean | both [$pooling]
  --transductive B    true = k-means sees the held-out session (the FLEA paper), labelled in results [$transductive]
  --tapt-labels DIR   continue pretraining on these k-means labels before the teacher (TAPT) [none]
  --selection RULE    valid | paper [$selection]
  --teacher-epochs N, --finetune-epochs N, --head-epochs N, --cpt-updates N, --cpt-config FILE, --finetune-lr LR
  --device D          auto | cpu | cuda [$device]
  --tag NAME          experiment directory exp/NAME [protocol]
  --head-overrides S  extra yaml overrides for the heads' training, e.g. "--batch_size 16"
EOM
)
. ../../local/parse_options.sh
[ $# -eq 0 ] || die "unexpected argument '$1' (see --help)"

case "$protocol" in iemocap_loso5) nfolds=5 ;; iemocap_loso10) nfolds=10 ;;
  *) die "--protocol $protocol: this recipe runs iemocap_loso5 or iemocap_loso10" ;; esac
case "$pooling" in attention|mean) poolings=$pooling ;; both) poolings="attention mean" ;;
  *) die "--pooling $pooling: attention, mean or both" ;; esac
case "$transductive" in true|false) ;; *) die "--transductive takes true or false" ;; esac
if [ "$device" = auto ]; then
  device=$(python -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')
fi

root=${root:-$IEMOCAP}
mini=false
[ -n "$root" ] || mini=true
[ -n "$root" ] && [ ! -d "$root" ] && die "--root $root: no such directory (set IEMOCAP in db.sh or pass --root)"
if $mini; then
  log "No corpus given (db.sh IEMOCAP / --root): running on the mini corpus with a tiny HuBERT on $device."
  # Tiny models gain nothing from a second thread, and torch's spinning threads slow down tenfold
  # when another process shares the cores: one thread per process keeps the demo's time predictable.
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  root=db/mini_iemocap/IEMOCAP_full_release
  method=${method:-flea,shiftcnn}
  # the tiny HuBERT learns nothing in 10 epochs at the paper's 1e-4
  finetune_lr=${finetune_lr:-0.001}
  # SpecAugment's channel masks scaled from ShiftSER's 64 of 768 channels to the tiny model's 64
  head_overrides=${head_overrides:-"--channel_mask_width 5"}
  teacher_epochs=${teacher_epochs:-10}; finetune_epochs=${finetune_epochs:-10}; head_epochs=${head_epochs:-15}
  cpt_updates=${cpt_updates:-150}; cpt_config=${cpt_config:-conf/fairseq/cpt_hubert_tiny.yaml}
else
  method=${method:-flea}
  teacher_epochs=${teacher_epochs:-40}; finetune_epochs=${finetune_epochs:-40}; head_epochs=${head_epochs:-100}
  cpt_updates=${cpt_updates:-20000}; cpt_config=${cpt_config:-conf/fairseq/cpt_hubert_base.yaml}
  [ -n "$upstream" ] || die "--upstream is required with a real corpus (e.g. --upstream /models/hubert_base_ls960.pt)"
fi
[ -z "$upstream" ] || [ -f "$upstream" ] || die "--upstream $upstream: no such file"
upstream=${upstream:+$(realpath "$upstream")}

data=data/iemocap
splits=$data/$protocol
tag=${tag:-$protocol}
exp=exp/$tag
timing_file=$exp/timing.tsv
mkdir -p "$exp"
: > "$timing_file"
fold_list=$(folds_of "$folds" "$nfolds")
lr_opt=(); [ -n "$finetune_lr" ] && lr_opt=(--lr "$finetune_lr")

# run_json DIR key=value...: the run's description, read by `serkit score` for RESULTS.md.
run_json() {
  local dir=$1; shift
  mkdir -p "$dir"
  python - "$dir/run.json" "$@" <<'PY'
import json, sys
out = {"corpus": "IEMOCAP"}
for kv in sys.argv[2:]:
    k, _, v = kv.partition("=")
    out[k] = v
json.dump(out, open(sys.argv[1], "w"), indent=2)
PY
}
upstream_label() { if $mini; then echo "tiny HuBERT (pretrained here on a separate mini corpus)"; else basename "$upstream"; fi; }

###############################################################################
if stage_selected 0; then
  log "Stage 0: data: $root -> $data -> $splits"
  if $mini; then
    opts="mini seed=0"
    is_done db/mini_iemocap "$opts" || {
      timed mini_corpus serkit mini-corpus iemocap --out db/mini_iemocap --seed 0
      mark_done db/mini_iemocap "$opts"; }
  fi
  opts="root=$(realpath "$root")"
  is_done "$data" "$opts" || {
    timed prepare serkit prepare iemocap --root "$root" --out "$data"
    mark_done "$data" "$opts"; }
  opts="protocol=$protocol valid=$valid"
  is_done "$splits" "$opts" || {
    timed split serkit split "$protocol" "$data" --out "$splits" --valid "$valid"
    mark_done "$splits" "$opts"; }
  serkit check-split "$splits"
  if $mini && [ -z "$upstream" ]; then
    timed tiny_upstream bash ../../local/make_tiny_upstream.sh --workdir . --out exp/upstream
  fi
fi
if $mini && [ -z "$upstream" ]; then
  upstream=$(realpath exp/upstream/tiny_hubert.pt)
fi
[ "$stop_stage" -lt 1 ] || [ -f "$upstream" ] || die "no upstream checkpoint at '$upstream' (run stage 0 or pass --upstream)"
if $mini; then
  num_layers=$(python -c "from serkit.upstream import load_upstream; print(load_upstream('$upstream').num_layers)" 2>/dev/null)
  if [ "$layer" -gt "$num_layers" ]; then
    log "the tiny HuBERT has $num_layers layers: clustering layer $num_layers instead of $layer"
    layer=$num_layers
  fi
  nclusters=$([ "$nclusters" -gt 16 ] && echo 16 || echo "$nclusters")
fi

flea=false; heads=()
for m in ${method//,/ }; do
  case "$m" in
    flea) flea=true ;;
    linear|ffn|cnn|shiftcnn|transformer|shiftformer|lstm|shiftlstm|bas|mfsn) heads+=("$m") ;;
    *) die "--method $m: unknown (see --help)" ;;
  esac
done

###############################################################################
if $flea && stage_selected 1; then
  for k in $fold_list; do
    fold=$splits/fold$k; out=$exp/teacher/fold$k
    log "Stage 1: teacher fold $k: finetune $(basename "$upstream") on $fold -> $out; dump layer $layer -> $out/layer$layer"
    start=$upstream
    if [ -n "$tapt_labels" ]; then
      opts="upstream=$upstream labels=$tapt_labels updates=$cpt_updates config=$cpt_config"
      is_done "$exp/tapt/fold$k" "$opts" || {
        timed "tapt_fold$k" bash local/cpt.sh --yaml "$cpt_config" --fold "$fold" --labels "$tapt_labels" \
          --init "$upstream" --updates "$cpt_updates" --out "$exp/tapt/fold$k"
        mark_done "$exp/tapt/fold$k" "$opts"; }
      start=$(realpath "$exp/tapt/fold$k/checkpoint_last.pt")
    fi
    opts="upstream=$start epochs=$teacher_epochs lr=$finetune_lr"
    is_done "$out" "$opts" || {
      timed "teacher_fold$k" serkit train conf/flea.yaml --fold-dir "$fold" --output-folder "$out" \
        --upstream "$start" --pooling attention --number_of_epochs "$teacher_epochs" "${lr_opt[@]}" \
        --device "$device" --noprogressbar
      serkit export-upstream --exp "$out" --out "$out/upstream.pt"
      mark_done "$out" "$opts"; }
    opts="layer=$layer"
    is_done "$out/layer$layer" "$opts" || {
      timed "dump_fold$k" serkit dump-features --upstream "$out/upstream.pt" --layers "$layer" \
        --data "$fold/train.tsv" "$fold/valid.tsv" "$fold/test.tsv" --out "$out/layer$layer" --device "$device"
      mark_done "$out/layer$layer" "$opts"; }
  done
  run_json "$exp/teacher" method="teacher (HuBERT finetuned, attention pooling)" setting=finetune \
    protocol="$protocol" upstream="$(upstream_label)" config=conf/flea.yaml selection=valid_test_mean
fi

###############################################################################
if $flea && stage_selected 2; then
  for k in $fold_list; do
    fold=$splits/fold$k; feats=$exp/teacher/fold$k/layer$layer; out=$exp/km/fold$k
    log "Stage 2: k-means fold $k: $feats (train split$($transductive && echo ', transductive: all splits')) -> $out"
    trans=(); $transductive && trans=(--transductive)
    opts="layer=$layer k=$nclusters transductive=$transductive"
    is_done "$out" "$opts" || {
      timed "kmeans_fold$k" serkit kmeans fit --feats "$feats" --fold "$fold" --split train --layer "$layer" \
        --n-clusters "$nclusters" --out "$out/km.model" "${trans[@]}"
      serkit kmeans apply --model "$out/km.model" --feats "$feats" --fold "$fold" --splits train,valid,test --out "$out"
      mark_done "$out" "$opts"; }
  done
fi

###############################################################################
if $flea && stage_selected 3; then
  for k in $fold_list; do
    fold=$splits/fold$k; out=$exp/cpt/fold$k
    log "Stage 3: continued pretraining fold $k: $(basename "$upstream") + $exp/km/fold$k -> $out"
    opts="upstream=$upstream k=$nclusters updates=$cpt_updates config=$cpt_config"
    is_done "$out" "$opts" || {
      timed "cpt_fold$k" bash local/cpt.sh --yaml "$cpt_config" --fold "$fold" --labels "$exp/km/fold$k" \
        --init "$upstream" --updates "$cpt_updates" --out "$out"
      mark_done "$out" "$opts"; }
  done
fi

###############################################################################
if stage_selected 4; then
  if $flea; then
    for p in $poolings; do
      run=$exp/flea_$p
      for k in $fold_list; do
        fold=$splits/fold$k; cpt=$(realpath "$exp/cpt/fold$k/checkpoint_last.pt"); out=$run/fold$k
        log "Stage 4: FLEA finetune fold $k ($p pooling): $cpt -> $out"
        opts="cpt=$cpt pooling=$p epochs=$finetune_epochs lr=$finetune_lr"
        is_done "$out" "$opts" || {
          timed "flea_${p}_fold$k" serkit train conf/flea.yaml --fold-dir "$fold" --output-folder "$out" \
            --upstream "$cpt" --pooling "$p" --number_of_epochs "$finetune_epochs" "${lr_opt[@]}" \
            --device "$device" --noprogressbar
          mark_done "$out" "$opts"; }
      done
      run_json "$run" method="FLEA ($p pooling)" setting=finetune protocol="$protocol" \
        upstream="CPT-$(upstream_label), layer $layer, k=$nclusters$($transductive && echo ', transductive')" \
        config=conf/flea.yaml selection=valid_test_mean
    done
  fi
  for h in "${heads[@]}"; do
    run=$exp/${h}_$setting
    if [ "$setting" = featex ]; then
      feats=dump/$(basename "${upstream%.*}")/all_layers
      log "Stage 4: features of every layer of $(basename "$upstream") for all of $data -> $feats"
      opts="upstream=$upstream"
      is_done "$feats" "$opts" || {
        timed dump_all serkit dump-features --upstream "$upstream" --layers all --data "$data" --out "$feats" \
          --device "$device"
        mark_done "$feats" "$opts"; }
    fi
    for k in $fold_list; do
      fold=$splits/fold$k; out=$run/fold$k
      log "Stage 4: $h ($setting) fold $k: $fold -> $out"
      opts="upstream=$upstream setting=$setting epochs=$head_epochs overrides=$head_overrides"
      is_done "$out" "$opts" || {
        if [ "$setting" = featex ]; then
          timed "${h}_fold$k" bash local/train_head.sh --method "$h" --fold "$fold" --out "$out" \
            --feats "$feats" --epochs "$head_epochs" --device "$device" --overrides "$head_overrides"
        else
          timed "${h}_fold$k" bash local/train_head.sh --method "$h" --fold "$fold" --out "$out" \
            --upstream "$upstream" --epochs "$head_epochs" --device "$device" --overrides "$head_overrides"
        fi
        mark_done "$out" "$opts"; }
    done
    run_json "$run" method="$h" setting="$setting" protocol="$protocol" upstream="$(upstream_label)" \
      config="conf/$h.yaml" selection="$(case $h in bas|mfsn) echo valid ;; *) echo best_test ;; esac)"
  done
fi

###############################################################################
if stage_selected 5; then
  runs=()
  $flea && runs+=("$exp/teacher") && for p in $poolings; do runs+=("$exp/flea_$p"); done
  for h in "${heads[@]}"; do runs+=("$exp/${h}_$setting"); done
  log "Stage 5: scoring (${selection} selection): ${runs[*]}"
  for r in "${runs[@]}"; do
    timed "score_$(basename "$r")" serkit score "$r" --selection "$selection" > /dev/null
  done
  serkit results "${runs[@]}" --out "$exp/RESULTS.md"
  log "Results table: $exp/RESULTS.md; per-run details: <run>/RESULTS.md, confusion.png"
  if [ -f "$timing_file" ]; then
    log "Where the time went in this run (seconds per step, summed over folds):"
    sed -E 's/_fold[0-9]+\t/\t/' "$timing_file" \
      | awk -F'\t' '{t[$1]+=$2; s+=$2} END {for (k in t) printf "%8d  %s\n", t[k], k; printf "%8d  total\n", s}' \
      | sort -k1,1nr >&2
  fi
fi
