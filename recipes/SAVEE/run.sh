#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# SAVEE recipe: MFSN and its ablations (SEC only, SEC+TEC without search, full MFSN) on the
# leave-one-speaker-out (4 folds) and the paper's 10-fold cross-validation protocols.
#
# Stages (each logs what it reads and writes, records its options in a .done marker and resumes):
#   0  data: prepare the corpus (16 kHz wavs, data directory) and write the folds of each protocol
#      (no corpus given: build the mini SAVEE corpus first)
#   1  features: dump TEC (ASR model, one layer) and SEC (data2vec, early/middle/late layers) once
#      for the whole corpus (no upstreams given on the mini corpus: the tiny HuBERT for both)
#   2  train every ablation on every fold with `serkit train` (MFSN: a search call writes arch.txt,
#      a second call retrains the derived cell)
#   3  score every run (`serkit score`, validation selection) and print the ablation table
set -euo pipefail
cd "$(dirname "$0")"
. ./path.sh
. ./db.sh
. ../../local/stage.sh

stage=0
stop_stage=3
root=""                 # SAVEE directory (AudioData/ or flat wavs); default: db.sh, else the mini corpus
protocol=both           # savee_loso4 | savee_cv10 | both
folds=""                # all | comma list, e.g. 1,3 [all; mini corpus: 1]
valid_fraction=""       # stratified validation share of the training speakers' utterances [0.1; mini: 0.25]
tec_upstream=""         # CTC-finetuned wav2vec 2.0 fairseq checkpoint (wav2vec_small_960h.pt)
sec_upstream=""         # data2vec audio fairseq checkpoint (audio_base_ls.pt)
tec_layer=""            # TEC layer [12; mini: 2] (the last transformer layer of a base model)
sec_layers=""           # SEC early,middle,late layers [4,8,12; mini: 0,1,2]
ablations=sec_only,sec_tec_nosearch,mfsn
config=""               # trainer yaml [the shared mfsn.yaml; mini: with the mfsn_mini overlay]
search_epochs=""        # MFSN search epochs [the config's]
epochs=""               # training / retraining epochs [the config's]
batch_size=""           # [the config's]
device=auto             # auto | cpu | cuda
tag=""                  # experiments go to exp/<tag>/<protocol>/<ablation>/fold<k> [mini or real]
tensorboard=""          # TensorBoard events of every training under DIR/<protocol>/<run>/fold<k> (needs serkit[tensorboard])

help_message=$(cat <<EOM
Usage: $0 [options]
Runs MFSN and its ablations on SAVEE. With no corpus in db.sh and no --root it builds the mini SAVEE
corpus and the tiny HuBERT (pretrained here on a separate mini corpus; used for BOTH knowledge sources) and runs end to end on CPU in a
few minutes; those numbers only show that the pipeline works.

Options (default in brackets):
  --stage N / --stop-stage M  run stages N..M [$stage..$stop_stage]
  --root DIR            SAVEE corpus directory [db.sh: ${SAVEE:-none} -> mini corpus]
  --protocol NAME       savee_loso4 | savee_cv10 | both [$protocol]
  --folds LIST          all | 1,3,... [all; mini corpus: 1]
  --valid-fraction F    stratified validation share of the training utterances [0.1; mini corpus: 0.25,
                        so that its 32 clips per speaker still give every class a validation clip]
  --tec-upstream FILE   CTC-finetuned wav2vec 2.0 fairseq checkpoint, the TEC source
                        [required with a real corpus; mini: tiny HuBERT]
  --sec-upstream FILE   data2vec audio fairseq checkpoint, the SEC source
                        [required with a real corpus; mini: tiny HuBERT]
  --tec-layer L         TEC layer [12; mini: 2]
  --sec-layers L1,L2,L3 SEC early,middle,late layers [4,8,12; mini: 0,1,2]
  --ablations LIST      comma list of sec_only, sec_tec_nosearch, mfsn [$ablations]; also mfsn_single
                        (serkit's ablation: the emotion module sees only the Fusion Cell's output)
  --config FILE         trainer HyperPyYAML [the shared mfsn.yaml; mini: with the mfsn_mini overlay]
  --search-epochs N     MFSN architecture-search epochs [the config's]
  --epochs N            training epochs (MFSN: retraining of the derived cell) [the config's]
  --batch-size N        [the config's]
  --device D            auto | cpu | cuda [$device]
  --tag NAME            experiment directory exp/NAME [mini | real]
  --tensorboard DIR     also write each training's losses and metrics as TensorBoard events to
                        DIR/<protocol>/<run>/fold<k> (serkit train --tensorboard; needs serkit[tensorboard]) [none]
  --options-file FILE   options from FILE's name=value lines (e.g. 'epochs=20'), read in place
EOM
)
. ../../local/parse_options.sh
# The MFSN config is shared with IEMOCAP (serkit config lists it); SAVEE needs none of its own.
shared_conf=../../plugins/serkit/conf
config_args=()  # overrides that go with the default config
[ $# -eq 0 ] || die "unexpected argument '$1' (see --help)"

case "$protocol" in
  savee_loso4|savee_cv10) protocols=$protocol ;;
  both) protocols="savee_loso4 savee_cv10" ;;
  *) die "--protocol $protocol: savee_loso4, savee_cv10 or both" ;;
esac
for a in ${ablations//,/ }; do
  case "$a" in sec_only|sec_tec_nosearch|mfsn|mfsn_single) ;; *) die "--ablations: unknown '$a' (sec_only, sec_tec_nosearch, mfsn, mfsn_single)" ;; esac
done
check_stages "$stage" "$stop_stage" 3
[ -z "$folds" ] || check_folds_spec "$folds"
[ -z "$valid_fraction" ] || check_number --valid-fraction "$valid_fraction"
for v in search_epochs epochs batch_size; do [ -z "${!v}" ] || check_int "--${v//_/-}" "${!v}" 1; done
check_device "$device"
if [ "$device" = auto ]; then
  device=$(python -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')
fi

root=${root:-$SAVEE}
mini=false
[ -n "$root" ] || mini=true
if $mini; then
  log "No corpus given (db.sh SAVEE / --root): mini SAVEE corpus, the tiny HuBERT for TEC and SEC, $device."
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # tiny models: one thread per process avoids spinning-thread slowdowns
  [ -z "$tec_upstream$sec_upstream" ] || die "--tec-upstream/--sec-upstream need a real corpus (--root); the mini corpus uses the tiny HuBERT"
  root=db/mini/SAVEE
  folds=${folds:-1}; valid_fraction=${valid_fraction:-0.25}; tec_layer=${tec_layer:-2}; sec_layers=${sec_layers:-0,1,2}
  [ -n "$config" ] || config_args=(--overlay "$shared_conf/mfsn_mini.yaml")  # CPU-sized
  config=${config:-$shared_conf/mfsn.yaml}; tag=${tag:-mini}
  tec_upstream=$PWD/exp/upstream/tiny_hubert.pt; sec_upstream=$tec_upstream
  sources_label="tiny HuBERT pretrained on a separate mini corpus (CPU demo; NOT wav2vec 2.0/data2vec): TEC L$tec_layer, SEC L$sec_layers"
else
  [ -d "$root" ] || die "--root $root: no such directory (set SAVEE in db.sh or pass --root)"
  [ -n "$tec_upstream" ] || die "--tec-upstream is required with a real corpus (e.g. /models/wav2vec_small_960h.pt)"
  [ -n "$sec_upstream" ] || die "--sec-upstream is required with a real corpus (e.g. /models/audio_base_ls.pt)"
  for f in "$tec_upstream" "$sec_upstream"; do [ -f "$f" ] || die "$f: no such checkpoint file"; done
  tec_upstream=$(realpath "$tec_upstream"); sec_upstream=$(realpath "$sec_upstream")
  folds=${folds:-all}; valid_fraction=${valid_fraction:-0.1}; tec_layer=${tec_layer:-12}; sec_layers=${sec_layers:-4,8,12}
  [ -n "$config" ] || config_args=(--cache_in_memory True)  # SAVEE is small (480 clips)
  config=${config:-$shared_conf/mfsn.yaml}; tag=${tag:-real}
  sources_label="TEC $(basename "$tec_upstream") L$tec_layer (detached) + SEC $(basename "$sec_upstream") L$sec_layers"
fi
[ -f "$config" ] || die "--config $config: no such file"
[[ "$sec_layers" =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--sec-layers $sec_layers: a comma list of layer numbers"
[[ "$tec_layer" =~ ^[0-9]+$ ]] || die "--tec-layer $tec_layer: one layer number"
lock_workdir "$PWD"

data=data/savee
exp=exp/$tag
tensorboard=${tensorboard:+$(realpath -m "$tensorboard")}
# tb OUT: the --tensorboard option of the training that writes OUT (events in DIR/<OUT below exp>)
tb() { tb=(); [ -z "$tensorboard" ] || tb=(--tensorboard "$tensorboard/${1#"$exp"/}"); }
dump=dump/$tag
timing_file=$exp/timing.tsv
mkdir -p "$exp"
log_to "$exp/run.log"

###############################################################################
if stage_selected 0; then
  if $mini; then
    log "Stage 0: mini SAVEE corpus -> db/mini; tiny HuBERT -> $tec_upstream"
    is_done db/mini "mini-corpus savee" || {
      serkit mini-corpus savee --out db/mini; mark_done db/mini "mini-corpus savee"; }
    bash ../../local/make_tiny_upstream.sh --workdir . --out exp/upstream
  fi
  log "Stage 0: prepare: $root -> $data"
  is_done "$data" "root=$(realpath "$root")" "$root" || {
    serkit prepare savee --root "$root" --out "$data"; mark_done "$data"; }
  for p in $protocols; do
    log "Stage 0: split $p: $data -> $data/$p"
    opts="protocol=$p valid_fraction=$valid_fraction"
    is_done "$data/$p" "$opts" "$data" || {
      serkit split "$p" "$data" --out "$data/$p" --valid-fraction "$valid_fraction"; mark_done "$data/$p"; }
  done
fi

# Feature directories: one dump when both sources are the same checkpoint.
if [ "$tec_upstream" = "$sec_upstream" ]; then
  layers=$(echo "$sec_layers,$tec_layer" | tr , '\n' | sort -n | uniq | paste -sd, -)
  tec_feats=$dump/feats_shared; sec_feats=$tec_feats
  dumps=("$tec_feats|$tec_upstream|$layers")
else
  tec_feats=$dump/feats_tec; sec_feats=$dump/feats_sec
  dumps=("$tec_feats|$tec_upstream|$tec_layer" "$sec_feats|$sec_upstream|$sec_layers")
fi

###############################################################################
if stage_selected 1; then
  for d in "${dumps[@]}"; do
    IFS='|' read -r out ckpt layers <<< "$d"
    log "Stage 1: dump features: $ckpt layers $layers of $data (all $(wc -l < "$data/wav.scp") utterances) -> $out"
    opts="upstream=$ckpt layers=$layers data=$(realpath "$data")"
    # dump-features resumes by itself; the marker only says that it finished with these options.
    is_done "$out" "$opts" "$ckpt" "$data" || {
      timed "dump_$(basename "$out")" serkit dump-features --upstream "$ckpt" --layers "$layers" \
        --data "$data" --out "$out" --device "$device" --no-progress
      mark_done "$out"; }
  done
fi

###############################################################################
if stage_selected 2; then
  for p in $protocols; do
    for a in ${ablations//,/ }; do
      run=$exp/$p/$a; run_search=$exp/$p/${a}_search
      fold_list=$(split_folds "$data/$p" "$folds") || exit 1
      for k in $fold_list; do
        fold=$data/$p/fold$k; out=$run/fold$k
        [ -d "$fold" ] || die "$fold: no such fold (run stage 0, or check --folds)"
        log "Stage 2: $a, $p fold $k: $fold + $tec_feats / $sec_feats -> $out"
        extra=(--tec_layer "$tec_layer" --sec_layers "[$sec_layers]" --device "$device" --noprogressbar)
        [ -z "$search_epochs" ] || extra+=(--search_epochs "$search_epochs")
        [ -z "$epochs" ] || extra+=(--train_epochs "$epochs")
        [ -z "$batch_size" ] || extra+=(--batch_size "$batch_size")
        case $a in mfsn_single) extra+=(--ablation mfsn --streams single) ;; *) extra+=(--ablation "$a") ;; esac
        train=(serkit train "$config" "${config_args[@]}" --fold-dir "$fold" --feats "$sec_feats" --tec_feats "$tec_feats" "${extra[@]}")
        # re-split folds, re-dumped features or an edited config retrain
        opts="config=$config${config_args[*]:+ ${config_args[*]}} tec=$tec_upstream:$tec_layer sec=$sec_upstream:$sec_layers ${extra[*]}"
        inputs=("$data/$p" "$tec_feats" "$sec_feats" "$config")
        [ "${config_args[0]:-}" != --overlay ] || inputs+=("${config_args[1]}")
        arch=()
        if [ "${a%_single}" = mfsn ]; then  # search, then retrain the derived cell: two serkit train calls
          search=$run_search/fold$k
          log "Stage 2: $a search, $p fold $k -> $search/arch.txt"
          is_done "$search" "$opts" "${inputs[@]}" || {
            tb "$search"
            timed "${p}_${a}_search_fold$k" logged "$search/log/train.log" "${train[@]}" --output-folder "$search" \
              --sources_label "\"$sources_label\"" "${tb[@]}"
            mark_done "$search"; }
          arch=(--arch "$(cat "$search/arch.txt")")
          log "  derived cell ${arch[1]} (<SEC level>:<operation>); retraining it"
        fi
        is_done "$out" "$opts ${arch[*]}" "${inputs[@]}" || {
          tb "$out"
          timed "${p}_${a}_fold$k" logged "$out/log/train.log" "${train[@]}" --output-folder "$out" \
            --sources_label "\"$sources_label\"" "${arch[@]}" "${tb[@]}"
          mark_done "$out"; }
      done
    done
  done
fi

###############################################################################
if stage_selected 3; then
  runs=()
  for p in $protocols; do for a in ${ablations//,/ }; do runs+=("$exp/$p/$a"); done; done
  log "Stage 3: scoring (valid selection): ${runs[*]} -> <run>/RESULTS.md, $exp/RESULTS.md"
  for r in "${runs[@]}"; do
    [ -d "$r" ] || die "$r: no such run (run stage 2)"
    serkit score "$r" --selection valid > /dev/null
  done
  {
    echo "# SAVEE: MFSN ablations (UA/WA mean ± std over folds, test split, epoch chosen on validation)"
    echo
    echo "Sources: $sources_label. savee_cv10 is speaker-dependent (the MFSN paper's protocol);"
    echo "savee_loso4 holds each speaker out. Folds run: $folds."
    echo
    serkit results "${runs[@]}"
  } > "$exp/RESULTS.md.tmp"
  mv "$exp/RESULTS.md.tmp" "$exp/RESULTS.md"
  cat "$exp/RESULTS.md"
  log "Ablation table: $(realpath "$exp")/RESULTS.md; per-run details: <run>/RESULTS.md, confusion.png, fold*/arch.txt"
fi
