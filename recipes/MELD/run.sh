#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# MELD recipe: BAS (block architecture search, Interspeech 2023) on frozen self-supervised features,
# against the paper's baselines (simple-FFN; a transformer of as many layers, as the BAS block stack of
# msa_ffn blocks and as serkit's transformer head), on the official split, weighted F1 as the headline.
#
# Stages (each logs what it reads and writes, records its options in a .done marker and resumes):
#   0  data: decode the mp4 clips once to 16 kHz mono wavs, write the data directory (broken, silent
#      and missing clips listed in data/meld/skipped.tsv), the meld_official split, the leakage check
#      (no corpus given: build the mini MELD first)
#   1  features: every layer (--layers) of the upstream for every utterance, dumped once
#      (no upstream given on the mini corpus: build the tiny HuBERT first)
#   2  BAS search: Gumbel-softmax supernet over {MSA+FFN, MSA, FFN} per layer -> arch.txt
#   3  retrain the derived architecture from scratch; train the baselines (and any --method heads)
#   4  score (validation selection on weighted F1) and print one table
set -euo pipefail
cd "$(dirname "$0")"
. ./path.sh
. ./db.sh
. ../../local/stage.sh

stage=0
stop_stage=4
root=""              # MELD.Raw directory; default: db.sh, else the mini corpus
upstream=""          # fairseq checkpoint (hubert_large_ll60k.pt) or Hugging Face directory (wavlm-large); mini corpus: tiny HuBERT
layers=all           # upstream layers dumped and mixed by the learned weighted sum: all | 0,6,12,...
method=bas,ffn,msa_ffn,transformer   # comma list of: bas ffn msa_ffn transformer linear cnn shiftcnn shiftformer lstm shiftlstm
bas_layers=4         # searchable layers: 3 or 4 (the paper's 3L-/4L-BAS); also the transformer baselines' depth
ffn_residual=false   # BAS FFN candidate: false = the paper's FFN without residual (Sec. 2.2) | true = LN(x + FFN(x))
search_epochs=""     # BAS search epochs [100; mini corpus: 20]
epochs=""            # retrain and baseline epochs [100; mini corpus: 15]
batch_size=""        # [32; mini corpus: 8]
model_dim=""         # width of the searched blocks [256; mini corpus: 64, the tiny HuBERT's width]
search_overrides=""  # extra yaml overrides for the search [mini corpus: faster arch lr, cooler temperature (ours)]
head_overrides=""    # extra yaml overrides for the retrain and every baseline, e.g. "--lr 0.01"
selection=valid      # valid | best_test | valid_test_mean (always named in the table)
best_metric=weighted_f1  # validation metric that picks each run's kept checkpoint: weighted_f1 (MELD's headline) | ua
device=auto          # auto | cpu | cuda
nj=2                 # parallel clip decoders (stage 0)
threads=""           # torch CPU threads [torch's default; mini corpus: 1]
tag=""               # experiments go to exp/<tag>/<run>/fold1 [meld_official; mini corpus: mini]
tensorboard=""       # TensorBoard events of every training under DIR/<run>/fold1 (needs serkit[tensorboard])
help_message=$(cat <<EOM
Usage: $0 [options]
Runs BAS and its baselines on MELD (official split, weighted-F1 headline). With no corpus in db.sh
and no --root it builds the mini MELD corpus and a tiny HuBERT and runs end to end on CPU in a few
minutes; those numbers only show that the pipeline works.

Options (default in brackets):
  --stage N / --stop-stage M  run stages N..M [$stage..$stop_stage]
  --root DIR            MELD.Raw directory (train/, dev_sent_emo.csv, test_sent_emo.csv, the clip folders)
                        [db.sh: ${MELD:-none} -> mini corpus]
  --upstream PATH       fairseq checkpoint (HuBERT-Large: hubert_large_ll60k.pt) or a local Hugging Face
                        model directory (WavLM-Large: microsoft/wavlm-large; needs serkit[hf])
                        [required with a real corpus; mini corpus: a tiny HuBERT pretrained here on a
                        separate mini corpus]
  --layers L            upstream layers to dump and mix: all | a comma list (0 = the CNN output) [$layers];
                        all layers of a Large model take ~9 GB per hour of audio in float16
  --method LIST         comma list of bas ffn msa_ffn transformer linear cnn shiftcnn shiftformer lstm shiftlstm
                        [$method]; bas = search + retrain; ffn = simple-FFN; msa_ffn = the BAS block stack
                        with every layer msa_ffn (the like-for-like transformer baseline, --model-dim wide);
                        transformer = serkit's transformer head (relative positions, the features' width);
                        both transformers have --bas-layers layers and BAS's training settings; the others
                        are the IEMOCAP recipe's heads with their ShiftSER settings
  --bas-layers N        searchable layers, 3 or 4, and the transformer baselines' layers [$bas_layers]
  --ffn-residual B      BAS FFN candidate with a residual, LN(x + FFN(x)): true | false [$ffn_residual;
                        false is the paper's "FFN without residual connection"]
  --search-epochs N     BAS search epochs [100; mini corpus: 20]
  --epochs N            retrain and baseline epochs [100; mini corpus: 15]
  --batch-size N        [32; mini corpus: 8, so that the 69 training clips give 9 steps an epoch]
  --model-dim D         width of the searched (and retrained) blocks [256; mini corpus: 64]
  --search-overrides S  extra yaml overrides for the search, e.g. "--arch_lr 0.02"
                        [mini corpus: "--arch_lr 0.5 --temperature_start 1.0 --temperature_decay 0.85",
                        ours, so that a 20-epoch search on 69 clips settles; the defaults (the paper's
                        SGD 0.005 for the logits, FBNet's tau 5.0 * 0.956^epoch) are made for 100 epochs of
                        real data]
  --head-overrides S    extra yaml overrides for the retrain and the baselines, e.g. "--lr 0.01"
  --selection RULE      valid | best_test | valid_test_mean [$selection]; valid selects on weighted F1
  --best-metric M       validation metric of the checkpoint each run keeps: weighted_f1 | ua [$best_metric]
  --device D            auto | cpu | cuda [$device]
  --nj N                parallel clip decoders (stage 0) [$nj]
  --threads N           torch CPU threads [torch's default; mini corpus: 1]
  --tag NAME            experiment directory exp/NAME [meld_official; mini corpus: mini]
  --tensorboard DIR     also write each training's losses and metrics as TensorBoard events to
                        DIR/<run>/fold1 (serkit train --tensorboard; needs serkit[tensorboard]) [none]
  --options-file FILE   options from FILE's name=value lines (e.g. 'epochs=20'), read in place
EOM
)
. ../../local/parse_options.sh
[ $# -eq 0 ] || die "unexpected argument '$1' (see --help)"

case "$bas_layers" in 3|4) ;; *) die "--bas-layers $bas_layers: the paper searches 3 or 4 layers" ;; esac
case "$ffn_residual" in true) ffn_residual_yaml=True ;; false) ffn_residual_yaml=False ;;
  *) die "--ffn-residual $ffn_residual: true or false" ;; esac
case "$selection" in valid|best_test|valid_test_mean) ;; *) die "--selection $selection: valid, best_test or valid_test_mean" ;; esac
check_stages "$stage" "$stop_stage" 4
[ "$layers" = all ] || check_int_list --layers "$layers"
for v in search_epochs epochs batch_size model_dim nj threads; do [ -z "${!v}" ] || check_int "--${v//_/-}" "${!v}" 1; done
check_device "$device"
heads=()
for m in ${method//,/ }; do
  case "$m" in
    bas|ffn|msa_ffn|transformer|linear|cnn|shiftcnn|shiftformer|lstm|shiftlstm) heads+=("$m") ;;
    *) die "--method $m: unknown (choose from bas ffn msa_ffn transformer linear cnn shiftcnn shiftformer lstm shiftlstm)" ;;
  esac
done
[ ${#heads[@]} -gt 0 ] || die "--method: give at least one method"
root=${root:-$MELD}
mini=false
[ -n "$root" ] || mini=true
[ -n "$root" ] && [ ! -d "$root" ] && die "--root $root: no such directory (set MELD in db.sh or pass --root)"
if $mini; then
  log "No corpus given (db.sh MELD / --root): running on the mini MELD corpus."
  root=db/mini_meld/MELD.Raw
  search_epochs=${search_epochs:-20}; epochs=${epochs:-15}; batch_size=${batch_size:-8}
  model_dim=${model_dim:-64}; threads=${threads:-${OMP_NUM_THREADS:-1}}; tag=${tag:-mini}
  # Ours, for the mini corpus only: the search defaults (SGD 0.005 on the logits, FBNet's tau
  # 5.0 * 0.956^epoch) are made for 100 epochs of ~300 steps; 20 epochs of 9 steps settle only with a
  # faster arch lr and a cooler schedule.
  search_overrides=${search_overrides:-"--arch_lr 0.5 --temperature_start 1.0 --temperature_decay 0.85"}
else
  search_epochs=${search_epochs:-100}; epochs=${epochs:-100}; batch_size=${batch_size:-32}
  model_dim=${model_dim:-256}; tag=${tag:-meld_official}
  [ -n "$upstream" ] || die "--upstream is required with a real corpus (e.g. --upstream /models/wavlm-large or /models/hubert_large_ll60k.pt)"
fi
[ -z "$upstream" ] || [ -e "$upstream" ] || die "--upstream $upstream: no such file or directory"
upstream=${upstream:+$(realpath "$upstream")}
lock_workdir "$PWD"
if [ "$device" = auto ]; then
  device=$(python -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')
fi
log "Device: $device"
if [ -n "$threads" ]; then
  # torch takes its intra-op thread count from it; tiny models gain nothing from a second thread,
  # and spinning threads slow down tenfold when another process shares the cores
  export OMP_NUM_THREADS=$threads
fi

data=data/meld
splits=$data/meld_official
fold=$splits/fold1
exp=exp/$tag
tensorboard=${tensorboard:+$(realpath -m "$tensorboard")}
# tb OUT: the --tensorboard option of the training that writes OUT (events in DIR/<OUT below exp>)
tb() { tb=(); [ -z "$tensorboard" ] || tb=(--tensorboard "$tensorboard/${1#"$exp"/}"); }
timing_file=$exp/timing.tsv
mkdir -p "$exp"
log_to "$exp/run.log"
: > "$timing_file"
# MELD's headline is weighted F1 (48 % of the test set is neutral): every run keeps the checkpoint
# best on validation WF1, as `serkit score --headline wf1` selects the reported epoch.
common=(--best_metric "$best_metric" --batch_size "$batch_size" --device "$device" --noprogressbar)
# The configs are shared with the other corpora (serkit config lists them); MELD needs none of its own.
shared_conf=../../plugins/serkit/conf
read -r -a search_extra <<< "$search_overrides"
read -r -a head_extra <<< "$head_overrides"

upstream_label() {
  if $mini && [ "$upstream" = "$(realpath -m exp/upstream/tiny_hubert.pt)" ]; then
    echo "tiny HuBERT (2 x 64, pretrained here on a separate mini corpus; not WavLM)"
  else
    basename "$upstream"
  fi
}

# run_json DIR key=value...: the run's description, read by `serkit score` for RESULTS.md.
run_json() {
  local dir=$1; shift
  write_run_json "$dir/run.json" corpus=MELD protocol=meld_official setting=featex headline=wf1 "$@"
}

###############################################################################
if stage_selected 0; then
  log "Stage 0: data: $root (mp4 clips) -> $data (16 kHz wavs in $data/wavs) -> $splits"
  if $mini; then
    opts="mini seed=0"
    is_done db/mini_meld "$opts" || {
      timed mini_corpus serkit mini-corpus meld --out db/mini_meld --seed 0
      mark_done db/mini_meld "$opts"; }
  fi
  # A re-run after a crash reuses the wavs already extracted (prepare resumes per clip).
  opts="root=$(realpath "$root")"
  is_done "$data" "$opts" "$root" || {
    timed prepare serkit prepare meld --root "$root" --out "$data" --jobs "$nj"
    mark_done "$data"; }
  log "  $(wc -l < "$data/wav.scp") utterances in $data; $(($(wc -l < "$data/skipped.tsv") - 1)) clips skipped (listed in $data/skipped.tsv)"
  opts="protocol=meld_official data=$(realpath "$data")"
  is_done "$splits" "$opts" "$data" || {
    timed split serkit split meld_official "$data" --out "$splits"
    mark_done "$splits"; }
  serkit check-split "$splits"
fi

###############################################################################
if $mini && [ -z "$upstream" ]; then
  upstream=$(realpath -m exp/upstream/tiny_hubert.pt)
  if stage_selected 1; then
    log "Stage 1: tiny HuBERT (MFCC k-means -> fairseq hubert_pretraining on a separate mini corpus) -> $upstream"
    # its pretraining corpus goes to db/mini_pretrain and data/pretrain here
    timed tiny_upstream bash ../../local/make_tiny_upstream.sh --workdir . --out exp/upstream
  fi
fi
[ "$stop_stage" -lt 1 ] || [ -e "$upstream" ] || die "no upstream at '$upstream' (run stage 1 or pass --upstream)"
feats=dump/$(basename "${upstream%.pt}")/$([ "$layers" = all ] && echo all_layers || echo "layers_${layers//,/_}")
if stage_selected 1; then
  log "Stage 1: features: layers $layers of $(basename "$upstream") for all of $data -> $feats"
  opts="upstream=$upstream layers=$layers data=$(realpath "$data")"
  thread_opt=(); [ -n "$threads" ] && thread_opt=(--threads "$threads")
  is_done "$feats" "$opts" "$upstream" "$data" || {
    timed dump serkit dump-features --upstream "$upstream" --layers "$layers" --data "$data" --out "$feats" \
      --device "$device" "${thread_opt[@]}" --no-progress
    mark_done "$feats"; }
fi

has() { local m; for m in "${heads[@]}"; do [ "$m" = "$1" ] && return 0; done; return 1; }
search=$exp/bas_search/fold1

###############################################################################
if has bas && stage_selected 2; then
  log "Stage 2: BAS search ($bas_layers layers, $search_epochs epochs): $fold + $feats -> $search (arch.txt, search_log.jsonl, search_probs.png)"
  opts="feats=$(realpath "$feats") layers=$bas_layers epochs=$search_epochs batch=$batch_size dim=$model_dim ffn_residual=$ffn_residual metric=$best_metric overrides=$search_overrides"
  is_done "$search" "$opts" "$feats" "$splits" "$shared_conf/bas_search.yaml" || {
    tb "$search"
    timed bas_search serkit train "$shared_conf/bas_search.yaml" --fold-dir "$fold" --output-folder "$search" \
      --feats "$feats" --search_layers "$bas_layers" --number_of_epochs "$search_epochs" \
      --model_dim "$model_dim" --ffn_residual "$ffn_residual_yaml" "${search_extra[@]}" "${common[@]}" "${tb[@]}"
    mark_done "$search"; }
  log "  derived architecture: $(cat "$search/arch.txt") (probabilities per epoch: $search/search_log.jsonl, $search/search_probs.png)"
fi

###############################################################################
# conf_of HEAD: BAS's config (BAS, its baselines) or ShiftSER's (the other heads; --method HEAD).
conf_of() { case $1 in bas|ffn|msa_ffn|transformer) echo "$shared_conf/bas.yaml" ;; *) echo "$shared_conf/shiftser.yaml" ;; esac; }
# The two transformer baselines: the paper's "traditional transformer" of --bas-layers layers, built as
# BAS's own msa_ffn block stack (like for like: same stem, width and blocks as BAS) and as serkit's
# transformer head (relative positions, the features' full width, many more parameters).
feat_dim() { json_value "$feats/meta.json" dim; }
method_name() {
  case "$1" in
    bas) echo "BAS ${bas_layers}L ($2)$([ "$ffn_residual" = true ] && echo ', FFN with residual')" ;;
    ffn) echo "simple-FFN" ;;
    msa_ffn) echo "Transformer ${bas_layers}L: BAS blocks ($2, ${model_dim} wide)" ;;
    transformer) echo "Transformer ${bas_layers}L: serkit head (relative positions, $(feat_dim) wide)" ;;
    *) echo "$1" ;;
  esac
}

if stage_selected 3; then
  for h in "${heads[@]}"; do
    run=$exp/$h; out=$run/fold1; extra=(); arch=""
    conf=$(conf_of "$h")
    case "$h" in
      bas)
        [ -f "$search/.done" ] || die "no finished BAS search in $search (run stage 2)"
        arch=$(cat "$search/arch.txt")
        extra=(--arch "$arch" --model_dim "$model_dim" --ffn_residual "$ffn_residual_yaml") ;;
      msa_ffn)  # the BAS retrain with every layer a transformer block
        arch=msa_ffn$(for ((i = 1; i < bas_layers; i++)); do printf ,msa_ffn; done)
        extra=(--arch "$arch" --model_dim "$model_dim") ;;
      transformer) extra=(--method transformer --transformer_layers "$bas_layers") ;;
      ffn) extra=(--method ffn) ;;
      *)  # ShiftSER heads: SpecAugment's channel masks scaled from 64 of 768 channels to the features' width
        dim=$(json_value "$feats/meta.json" dim) || exit 1
        extra=(--method "$h" --channel_mask_width "$(( dim * 64 / 768 > 1 ? dim * 64 / 768 : 1 ))") ;;
    esac
    log "Stage 3: $(method_name "$h" "$arch") ($conf, $epochs epochs): $fold + $feats -> $out"
    opts="feats=$(realpath "$feats") conf=$conf epochs=$epochs batch=$batch_size arch=$arch dim=$model_dim metric=$best_metric overrides=$head_overrides${extra[*]:+ extra=${extra[*]}}"
    is_done "$out" "$opts" "$feats" "$splits" "$conf" "$([ "$h" != bas ] || echo "$search")" || {
      tb "$out"
      timed "$h" serkit train "$conf" --fold-dir "$fold" --output-folder "$out" --feats "$feats" \
        --number_of_epochs "$epochs" "${extra[@]}" "${head_extra[@]}" "${common[@]}" "${tb[@]}"
      mark_done "$out"; }
    run_json "$run" method="$(method_name "$h" "$arch")" upstream="$(upstream_label)" config="$conf" \
      selection="$(case $h in bas|ffn|msa_ffn|transformer) echo valid ;; *) echo best_test ;; esac)"
  done
fi

###############################################################################
if stage_selected 4; then
  runs=()
  for h in "${heads[@]}"; do runs+=("$exp/$h"); done
  log "Stage 4: scoring (${selection} selection, headline weighted F1): ${runs[*]} -> $exp/RESULTS.md"
  for r in "${runs[@]}"; do
    [ -f "$r/run.json" ] || die "$r has not been trained (run stage 3)"
    timed "score_$(basename "$r")" serkit score "$r" --selection "$selection" --headline wf1 > /dev/null
  done
  serkit results "${runs[@]}" --out "$exp/RESULTS.md"
  has bas && log "BAS search: $(cat "$search/arch.txt") ($(realpath "$search")/search_probs.png)"
  log "Results table: $(realpath "$exp")/RESULTS.md; per-run details: <run>/RESULTS.md, confusion.png"
  if [ -s "$timing_file" ]; then
    log "Where the time went in this run (seconds per step):"
    awk -F'\t' '{t[$1]+=$2; s+=$2} END {for (k in t) printf "%8d  %s\n", t[k], k; printf "%8d  total\n", s}' \
      "$timing_file" | sort -k1,1nr >&2
  fi
fi
