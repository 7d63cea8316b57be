#!/usr/bin/env bash
# IEMOCAP recipe: FLEA end to end (pseudo-emotion labels -> HuBERT continued pretraining ->
# finetuning) and the ShiftSER / BAS / MFSN heads, on leak-free folds, scored the same way.
#
# Stages (each logs what it reads and writes, records its options in a .done marker and resumes):
#   0  data: prepare the corpus, write the folds (and, on the mini corpus, build the tiny HuBERT)
#   1  teacher: finetune the upstream for SER per fold, dump its layer --layer
#   2  k-means pseudo labels (faiss) fitted on the fold's training frames (--transductive true: on all
#      of its splits' frames), labels for all splits
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
upstream=""           # fairseq HuBERT checkpoint (hubert_base_ls960.pt) or, for the heads, a Hugging Face directory (wavlm-large); default on the mini corpus: tiny HuBERT
protocol=iemocap_loso5
valid=stratified      # iemocap_loso5 validation: stratified (10 % of training sessions) | speaker
folds=all             # all | comma list, e.g. 1,3
method=""             # default flea (mini corpus: flea,shiftcnn); comma list of: flea linear ffn cnn shiftcnn transformer shiftformer lstm shiftlstm bas bas_ffn bas_msa_ffn bas_transformer mfsn
bas_layers=4          # BAS: searchable layers, 3 or 4 (the paper's 3L-/4L-BAS), and the bas_msa_ffn/bas_transformer baselines' layers
search_overrides=""   # BAS: extra yaml overrides for the search only [mini corpus: faster arch lr, cooler temperature (ours)]
setting=featex        # heads: featex (frozen upstream, weighted layer sum) | finetune (upstream transformer trained)
layer=9               # FLEA: teacher layer clustered (the paper's best: 9)
nclusters=50          # FLEA: k-means clusters (the paper's best: 50)
pooling=both          # FLEA finetune pooling: attention | mean | both
transductive=false    # true: fit k-means on the frames of all splits of the fold (train+valid+test), held-out audio included (the official code's setting)
tapt_km=""            # FLEA TAPT (Sec. 3.1): a published k-means model (fairseq HuBERT/textless-NLP .bin, e.g. hubert_base_ls960_L9_km500.bin) applied to --upstream's layer --tapt-layer on each fold's audio; pretraining continues on those labels before the teacher
tapt_layer=9          # FLEA TAPT: the layer --tapt-km was fitted on (fairseq's HuBERT-base km500 release: layer 9)
tapt_labels=""        # FLEA: k-means labels to continue pretraining on before the teacher (TAPT): a directory laid out like stage 2's exp/<tag>/km (fold<k>/{train,valid}.km, dict.km.txt), or one fold's labels
teacher_pooling=mean  # FLEA teacher pooling: mean (not stated in the paper; our reading of Table 1, which lists the TAPT teacher under average pooling only) | attention
cpt_update_freq=auto  # FLEA CPT gradient accumulation: auto = ceil(4 / GPUs), the official code's 4 GPUs x 87.5 s per update | N
selection=valid       # valid | paper (ShiftSER: best test epoch; FLEA: (valid+test)/2), always named in RESULTS
teacher_epochs=""     # default 40 (mini corpus: 10)
finetune_epochs=""    # default 40 (mini corpus: 10)
head_epochs=""        # default 100 (mini corpus: 30)
cpt_updates=""        # default 20000 (mini corpus: 150)
cpt_config=""         # default conf/fairseq/cpt_hubert_base.yaml (mini corpus: cpt_hubert_tiny.yaml)
finetune_lr=""        # teacher and FLEA finetune learning rate: default conf/flea.yaml's 1e-4 (mini corpus: 1e-3)
device=auto           # auto | cpu | cuda
tag=""                # experiment directory name (default: the protocol)
workdir=.             # where data/, dump/, exp/ and db/ (the mini corpora) go (default: this recipe's directory)
tensorboard=""        # TensorBoard events of every training (SpeechBrain and fairseq) under DIR/<run>/fold<k> (needs serkit[tensorboard])
tec_upstream=""       # MFSN: CTC-finetuned wav2vec 2.0 (e.g. wav2vec_small_960h.pt) [mini corpus: the tiny HuBERT]
sec_upstream=""       # MFSN: data2vec audio (e.g. audio_base_ls.pt) [mini corpus: the tiny HuBERT]
tec_layer=""          # MFSN: TEC layer [12; mini corpus: 2]
sec_layers=""         # MFSN: SEC layers, early,middle,late [4,8,12; mini corpus: 0,1,2]
mfsn_config=""        # MFSN: [the shared mfsn.yaml; text/asr TEC: conf/mfsn_text.yaml]
mfsn_overlay=""       # MFSN: comma list of overlays on --mfsn-config [mini corpus: the shared mfsn_mini.yaml; text/asr TEC: and conf/mfsn_text_mini.yaml]
mfsn_ablation=mfsn    # MFSN: sec_only | sec_tec_nosearch | mfsn | mfsn_single (ours: the emotion module sees only the Fusion Cell's output)
mfsn_tec=audio        # MFSN TEC source: audio (the ASR model's frames, the paper) | text (IEMOCAP's transcripts) | asr (greedy CTC transcripts of --tec-upstream)
ctc_dict=""           # MFSN --mfsn-tec asr: the letter dictionary (dict.ltr.txt) of --tec-upstream
head_overrides=""     # extra yaml overrides for the heads, e.g. "--batch_size 16 --lr 0.001"
shiftser_input=masked # heads linear..shiftlstm: masked (whole utterances, padding masked: ours) | paper (clipped to 7.5 s, ShiftSER Sec. 3.1) | official (the first 7.5 s, zero-padded to 7.5 s, no mask: the ShiftSER code)

help_message=$(cat <<EOM
Usage: $0 [options]
Runs the IEMOCAP recipe; with no corpus in db.sh and no --root it builds the mini corpus and a
tiny HuBERT and runs end to end on CPU (that is 'make demo').

Options (default in brackets):
  --stage N / --stop-stage M   run stages N..M [$stage..$stop_stage]
  --root DIR          IEMOCAP_full_release directory [db.sh: ${IEMOCAP:-none}]
  --upstream PATH     fairseq HuBERT checkpoint (e.g. hubert_base_ls960.pt), or for the heads (not FLEA) a local
                      Hugging Face model directory (WavLM-Large: microsoft/wavlm-large, the BAS paper's best
                      row; needs serkit[hf]) [tiny HuBERT on the mini corpus]
  --protocol NAME     iemocap_loso5 | iemocap_loso10 [$protocol]
  --valid KIND        iemocap_loso5 validation set: stratified | speaker [$valid]
  --folds LIST        all | 1,3,... [$folds]
  --method LIST       flea and/or heads: linear ffn cnn shiftcnn transformer shiftformer lstm shiftlstm bas
                      bas_ffn bas_msa_ffn bas_transformer mfsn [flea; mini corpus: flea,shiftcnn].
                      BAS and its baselines train with BAS's settings (SGD 0.005, batch 32, 100 epochs):
                      bas = search + retrain, bas_ffn = simple-FFN, bas_msa_ffn = BAS's blocks all msa_ffn
                      (the like-for-like transformer), bas_transformer = serkit's transformer head;
                      ffn and transformer are the same heads with ShiftSER's settings
  --bas-layers N      BAS searchable layers, 3 or 4, and the layers of bas_msa_ffn, bas_transformer [$bas_layers]
  --search-overrides S  BAS: extra yaml overrides for the search only, e.g. "--arch_lr 0.01"
                      [mini corpus: "--arch_lr 0.5 --temperature_start 1.0 --temperature_decay 0.85", ours]
  --setting KIND      heads: featex | finetune [$setting]
  --layer L           FLEA teacher layer to cluster [$layer]
  --nclusters K       FLEA k-means clusters [$nclusters]
  --pooling KIND      FLEA finetune pooling: attention | mean | both [$pooling]
  --transductive B    true = k-means is fitted on every split of the fold, held-out audio included (FLEA's
                      official code); km.json counts the frames of each split; labelled in results [$transductive]
  --tapt-km FILE      TAPT (the paper): a published k-means model (fairseq HuBERT / textless-NLP .bin, read
                      without executing it) labels --upstream's layer --tapt-layer per fold; pretraining
                      continues on those labels before the teacher [none]
  --tapt-layer L      the layer --tapt-km was fitted on [$tapt_layer]
  --tapt-labels DIR   continue pretraining on these k-means labels before the teacher (TAPT): DIR/fold<k>/
                      {train,valid}.km + dict.km.txt, row-aligned with the folds' manifests [none]
  --teacher-pooling P FLEA teacher (stage 1) pooling: mean | attention [$teacher_pooling]
  --cpt-update-freq N CPT updates accumulate N batches of max_tokens per GPU: auto = ceil(4 / GPUs), the
                      official code's 4 x 87.5 s per update [$cpt_update_freq]
  --selection RULE    valid | paper [$selection]
  --teacher-epochs N, --finetune-epochs N, --head-epochs N, --cpt-updates N, --cpt-config FILE, --finetune-lr LR
  --device D          auto | cpu | cuda [$device]
  --tag NAME          experiment directory exp/NAME [protocol]
  --workdir DIR       where data/, dump/, exp/ and db/ go [this recipe's directory]
  --tensorboard DIR   also write every training's losses and metrics as TensorBoard events to DIR/<run>/fold<k>
                      (serkit train --tensorboard, fairseq common.tensorboard_logdir; needs serkit[tensorboard])
  --tec-upstream FILE, --sec-upstream FILE, --tec-layer L, --sec-layers L1,L2,L3, --mfsn-config FILE, --mfsn-overlay FILE[,FILE],
  --mfsn-ablation sec_only|sec_tec_nosearch|mfsn|mfsn_single    MFSN (--method mfsn; mfsn_single: serkit's
                      single-stream ablation) [mini corpus: the tiny HuBERT]
  --mfsn-tec SOURCE   MFSN TEC: audio | text (the corpus transcripts) | asr (greedy CTC, needs --ctc-dict)
                      [$mfsn_tec]; text and asr are serkit's text ablation, not the paper's (text leaks across sessions)
  --ctc-dict FILE     dict.ltr.txt of the CTC --tec-upstream, for --mfsn-tec asr
  --head-overrides S  extra yaml overrides for the heads' training, e.g. "--batch_size 16"
  --shiftser-input K  what heads linear..shiftlstm see: masked (whole utterances, padding masked) |
                      paper (clipped to 7.5 s) | official (first 7.5 s zero-padded to 7.5 s, no mask) [$shiftser_input]
  --options-file FILE options from FILE's name=value lines (e.g. 'nclusters=100'), read in place
EOM
)
. ../../local/parse_options.sh
[ $# -eq 0 ] || die "unexpected argument '$1' (see --help)"
# Configs several corpora use live once, with serkit (serkit config lists them); conf/ holds IEMOCAP's own.
shared_conf=../../plugins/serkit/conf

check_options() {
  local v
  check_stages "$stage" "$stop_stage" 5
  check_choice --valid "$valid" stratified speaker
  check_choice --setting "$setting" featex finetune
  check_choice --selection "$selection" valid paper best_test valid_test_mean
  check_choice --mfsn-ablation "$mfsn_ablation" sec_only sec_tec_nosearch mfsn mfsn_single
  check_folds_spec "$folds"
  [ -z "$method" ] || check_choice_list --method "$method" flea linear ffn cnn shiftcnn transformer \
    shiftformer lstm shiftlstm bas bas_ffn bas_msa_ffn bas_transformer mfsn
  check_int --layer "$layer"; check_int --nclusters "$nclusters" 2; check_device "$device"
  for v in teacher_epochs finetune_epochs head_epochs cpt_updates; do
    [ -z "${!v}" ] || check_int "--${v//_/-}" "${!v}" 1
  done
  [ -z "$finetune_lr" ] || check_number --finetune-lr "$finetune_lr"
  [ -z "$tec_layer" ] || check_int --tec-layer "$tec_layer"
  [ -z "$sec_layers" ] || check_int_list --sec-layers "$sec_layers"
  [ -z "$tapt_labels" ] || [ -d "$tapt_labels" ] || die "--tapt-labels $tapt_labels: no such directory"
  for v in cpt_config mfsn_config ctc_dict; do [ -z "${!v}" ] || [ -f "${!v}" ] || die "--${v//_/-} ${!v}: no such file"; done
}
# check_layer: the layer FLEA clusters exists in the upstream (on the mini corpus: its last layer instead).
check_layer() {
  local n; n=$(upstream_num_layers "$upstream") || exit 1
  [ "$layer" -gt "$n" ] || return 0
  $mini || die "--layer $layer: $(basename "$upstream") has $n layers (0 = the CNN output)"
  log "the tiny HuBERT has $n layers: clustering layer $n instead of $layer"; layer=$n
}

case "$protocol" in iemocap_loso5|iemocap_loso10) ;;
  *) die "--protocol $protocol: this recipe runs iemocap_loso5 or iemocap_loso10" ;; esac
case "$pooling" in attention|mean) poolings=$pooling ;; both) poolings="attention mean" ;;
  *) die "--pooling $pooling: attention, mean or both" ;; esac
case "$transductive" in true|false) ;; *) die "--transductive takes true or false" ;; esac
case "$teacher_pooling" in attention|mean) ;; *) die "--teacher-pooling $teacher_pooling: attention or mean" ;; esac
[ -z "$tapt_km" ] || [ -z "$tapt_labels" ] || die "--tapt-km and --tapt-labels both give TAPT labels: pass one"
[ -z "$tapt_km" ] || [ -f "$tapt_km" ] || die "--tapt-km $tapt_km: no such file"
tapt_km=${tapt_km:+$(realpath "$tapt_km")}
case "$cpt_update_freq" in auto|[1-9]|[1-9][0-9]) ;; *) die "--cpt-update-freq $cpt_update_freq: auto or a number of batches" ;; esac
case "$mfsn_tec" in audio|text|asr) ;; *) die "--mfsn-tec $mfsn_tec: audio, text or asr" ;; esac
case "$bas_layers" in 3|4) ;; *) die "--bas-layers $bas_layers: the paper searches 3 or 4 layers" ;; esac
case "$shiftser_input" in
  masked) input_overrides=""; input_tag="" ;;
  paper) input_overrides="--max_duration 7.5"; input_tag="_clip7.5s" ;;
  official) input_overrides="--max_duration 7.5 --pad_to_max True"; input_tag="_pad7.5s" ;;
  *) die "--shiftser-input $shiftser_input: masked, paper or official" ;;
esac
check_options  # every other option, before anything runs
if [ "$device" = auto ]; then
  device=$(python -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')
fi

mkdir -p "$workdir"; workdir=$(realpath "$workdir")
lock_workdir "$workdir"
root=${root:-$IEMOCAP}
mini=false
[ -n "$root" ] || mini=true
[ -n "$root" ] && [ ! -d "$root" ] && die "--root $root: no such directory (set IEMOCAP in db.sh or pass --root)"
if $mini; then
  [ "$mfsn_tec" != asr ] || die "--mfsn-tec asr needs a CTC-finetuned wav2vec 2.0 (--tec-upstream) and --ctc-dict; the mini corpus has no ASR model (use --mfsn-tec text)"
  log "No corpus given (db.sh IEMOCAP / --root): running on the mini corpus with a tiny HuBERT on $device."
  # Tiny models gain nothing from a second thread, and torch's spinning threads slow down tenfold
  # when another process shares the cores: one thread per process keeps the demo's time predictable.
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  root=$workdir/db/mini_iemocap/IEMOCAP_full_release
  method=${method:-flea,shiftcnn}
  # the tiny HuBERT learns nothing in 10 epochs at the paper's 1e-4
  finetune_lr=${finetune_lr:-0.001}
  # SpecAugment's channel masks scaled from ShiftSER's 64 of 768 channels to the tiny model's 64
  # (ShiftSER heads only: BAS's config has no SpecAugment)
  [ -n "$head_overrides" ] || mini_specaugment=true
  head_overrides=${head_overrides:-"--channel_mask_width 5"}
  # BAS search, ours for the mini corpus only: short epochs settle only with a faster arch lr and a
  # cooler schedule than the defaults (SGD 0.005, FBNet's tau 5.0 * 0.956^epoch) made for real data
  # (the values measured on the mini MELD, recipes/MELD/README.md)
  search_overrides=${search_overrides:-"--arch_lr 0.5 --temperature_start 1.0 --temperature_decay 0.85"}
  teacher_epochs=${teacher_epochs:-10}; finetune_epochs=${finetune_epochs:-10}; head_epochs=${head_epochs:-30}
  cpt_updates=${cpt_updates:-150}; cpt_config=${cpt_config:-conf/fairseq/cpt_hubert_tiny.yaml}
  [ "$cpt_update_freq" != auto ] || cpt_update_freq=1  # the tiny model's batch is its own, not the paper's
  tec_layer=${tec_layer:-2}; sec_layers=${sec_layers:-0,1,2}
  if [ -z "$mfsn_config$mfsn_overlay" ]; then  # the CPU-sized MFSN: overlays on the full config
    mfsn_overlay=$shared_conf/mfsn_mini.yaml; [ "$mfsn_tec" = audio ] || mfsn_overlay+=,conf/mfsn_text_mini.yaml
  fi
  if [ "$mfsn_tec" = audio ]; then mfsn_config=${mfsn_config:-$shared_conf/mfsn.yaml}; else mfsn_config=${mfsn_config:-conf/mfsn_text.yaml}; fi
else
  method=${method:-flea}
  teacher_epochs=${teacher_epochs:-40}; finetune_epochs=${finetune_epochs:-40}; head_epochs=${head_epochs:-100}
  cpt_updates=${cpt_updates:-20000}; cpt_config=${cpt_config:-conf/fairseq/cpt_hubert_base.yaml}
  tec_layer=${tec_layer:-12}; sec_layers=${sec_layers:-4,8,12}
  if [ "$mfsn_tec" = audio ]; then mfsn_config=${mfsn_config:-$shared_conf/mfsn.yaml}; else mfsn_config=${mfsn_config:-conf/mfsn_text.yaml}; fi
  [ -n "$upstream" ] || die "--upstream is required with a real corpus (e.g. --upstream /models/hubert_base_ls960.pt)"
fi
[ -z "$upstream" ] || [ -e "$upstream" ] || die "--upstream $upstream: no such file or directory"
upstream=${upstream:+$(realpath "$upstream")}
mfsn_overlays=()
IFS=, read -r -a mfsn_overlays <<< "$mfsn_overlay"
for f in "${mfsn_overlays[@]}"; do [ -f "$f" ] || die "--mfsn-overlay $f: no such file"; done

flea=false; heads=()
for m in ${method//,/ }; do
  case "$m" in
    flea) flea=true ;;
    linear|ffn|cnn|shiftcnn|transformer|shiftformer|lstm|shiftlstm|bas|bas_ffn|bas_msa_ffn|bas_transformer|mfsn) heads+=("$m") ;;
    *) die "--method $m: unknown (see --help)" ;;
  esac
done
# FLEA continues HuBERT's pretraining with fairseq: a Hugging Face directory serves the heads only.
! $flea || [ ! -d "$upstream" ] || die "--upstream $upstream is a directory (Hugging Face): FLEA needs a fairseq HuBERT checkpoint file; use it with heads (--method bas,...) only"
# The layer FLEA clusters must exist: checked now when the upstream is given, else once stage 0 built it.
if [ -n "$upstream" ] && [ "$stop_stage" -ge 1 ] && { $flea || $mini; }; then check_layer; fi

data=$workdir/data/iemocap
splits=$data/$protocol
tag=${tag:-$protocol}
exp=$workdir/exp/$tag
tensorboard=${tensorboard:+$(realpath -m "$tensorboard")}
# tb OUT: the --tensorboard option of the training that writes OUT (events in DIR/<OUT below exp>)
tb() { tb=(); [ -z "$tensorboard" ] || tb=(--tensorboard "$tensorboard/${1#"$exp"/}"); }
timing_file=$exp/timing.tsv
mkdir -p "$exp"
log_to "$exp/run.log"
: > "$timing_file"
lr_opt=(); [ -n "$finetune_lr" ] && lr_opt=(--lr "$finetune_lr")

# run_json DIR key=value...: the run's description, read by `serkit score` for RESULTS.md.
run_json() { local dir=$1; shift; write_run_json "$dir/run.json" corpus=IEMOCAP "$@"; }
# dump_all CKPT: every layer of CKPT for every utterance of $data, dumped once; prints the directory.
dump_all() {
  local ckpt=$1 dir
  dir=$workdir/dump/$(basename "${ckpt%.*}")-$(echo "$ckpt" | md5sum | cut -c1-6)/all_layers
  if ! is_done "$dir" "upstream=$ckpt data=$data" "$ckpt" "$data"; then
    log "  features of every layer of $ckpt for all of $data -> $dir"
    timed "dump_$(basename "${ckpt%.*}")" logged "$dir/dump.log" serkit dump-features --upstream "$ckpt" \
      --layers all --data "$data" --out "$dir" --device "$device"
    mark_done "$dir"
  fi
  echo "$dir"
}
# mfsn_run TEC_SOURCE: the run directory of MFSN with that TEC source and the chosen ablation.
mfsn_run() { case $1 in audio) echo "$exp/mfsn_$mfsn_ablation" ;; *) echo "$exp/mfsn_$1_$mfsn_ablation" ;; esac; }
# km_label: which splits' frames the folds' k-means saw, and how many of each (mean over folds), from km.json.
km_label() {
  local files=() k
  for k in $fold_list; do [ -f "$exp/km/fold$k/km.json" ] && files+=("$exp/km/fold$k/km.json"); done
  python - "$transductive" "${files[@]}" <<'PY'
import json, sys
trans, metas = sys.argv[1] == "true", [json.load(open(p)) for p in sys.argv[2:]]
splits = metas[0].get("fit_splits", metas[0]["fit"]["splits"]) if metas else \
    (["train", "valid", "test"] if trans else ["train"])
counts = ", ".join(f"{s} {sum(m.get('fit_frames_per_split', {}).get(s, 0) for m in metas) / len(metas):.0f}"
                   for s in splits)
what = "transductive, " if trans else ""
print(f"k-means {what}fitted on {'+'.join(splits)} frames" + (f" (per fold: {counts})" if metas else ""))
PY
}
# head_conf HEAD: the config that trains HEAD (local/train_head.sh picks its --method).
head_conf() { case $1 in bas*) echo "$shared_conf/bas.yaml" ;; *) echo "$shared_conf/shiftser.yaml" ;; esac; }
# head_search_conf HEAD: the search config a head reads besides its head_conf (BAS), or nothing.
head_search_conf() { [ "$1" != bas ] || echo "$shared_conf/bas_search.yaml"; }
upstream_label() { if $mini; then echo "tiny HuBERT (pretrained here on a separate mini corpus)"; else basename "$upstream"; fi; }

###############################################################################
if stage_selected 0; then
  log "Stage 0: data: $root -> $data -> $splits"
  if $mini; then
    opts="mini seed=0"
    is_done "$workdir/db/mini_iemocap" "$opts" || {
      timed mini_corpus serkit mini-corpus iemocap --out "$workdir/db/mini_iemocap" --seed 0
      mark_done "$workdir/db/mini_iemocap" "$opts"; }
  fi
  opts="root=$(realpath "$root")"
  is_done "$data" "$opts" "$root" || {
    timed prepare serkit prepare iemocap --root "$root" --out "$data"
    mark_done "$data"; }
  opts="protocol=$protocol valid=$valid"
  is_done "$splits" "$opts" "$data" || {
    timed split serkit split "$protocol" "$data" --out "$splits" --valid "$valid"
    mark_done "$splits"; }
  serkit check-split "$splits"
  if $mini && [ -z "$upstream" ]; then
    timed tiny_upstream bash ../../local/make_tiny_upstream.sh --workdir "$workdir" --out "$workdir/exp/upstream"
  fi
fi
if $mini && [ -z "$upstream" ]; then
  upstream=$workdir/exp/upstream/tiny_hubert.pt
  if [ "$stop_stage" -ge 1 ] && [ -f "$upstream" ]; then check_layer; fi
fi
[ "$stop_stage" -lt 1 ] || [ -e "$upstream" ] || die "no upstream checkpoint at '$upstream' (run stage 0 or pass --upstream)"
$mini && nclusters=$([ "$nclusters" -gt 16 ] && echo 16 || echo "$nclusters")
if [ "$stop_stage" -ge 1 ]; then
  fold_list=$(split_folds "$splits" "$folds") || exit 1
  log "Folds of $splits to run: $fold_list"
fi

if $flea; then
  # CPT batch: fairseq's dataset.max_tokens is per GPU, so the batch of one update is
  # max_tokens x GPUs x update_freq; the official code ran 4 GPUs x 87.5 s (350 s of audio per update).
  [ -f "$cpt_config" ] || die "--cpt-config $cpt_config: no such file"
  cpt_gpus=$(python -c 'import torch; print(max(1, torch.cuda.device_count()))')
  [ "$cpt_update_freq" != auto ] || cpt_update_freq=$(( (4 + cpt_gpus - 1) / cpt_gpus ))
  cpt_batch=$(python - "$cpt_config" "$cpt_gpus" "$cpt_update_freq" <<'PY'
import sys, yaml
tokens = yaml.safe_load(open(sys.argv[1]))["dataset"]["max_tokens"]
gpus, freq = int(sys.argv[2]), int(sys.argv[3])
print(f"{tokens * gpus * freq / 16000:g} s of audio per update = {tokens / 16000:g} s x {gpus} GPU(s) x update_freq {freq}")
PY
  )
fi

###############################################################################
if $flea && stage_selected 1; then
  if [ -n "$tapt_km" ]; then  # TAPT labels: the published k-means model on --upstream's layer, per fold
    tapt_feats=$workdir/dump/$(basename "${upstream%.*}")-$(echo "$upstream" | md5sum | cut -c1-6)/layer$tapt_layer
    if ! is_done "$tapt_feats" "upstream=$upstream data=$data layer=$tapt_layer" "$upstream" "$data"; then
      log "Stage 1: TAPT: layer $tapt_layer of $upstream for all of $data -> $tapt_feats"
      timed tapt_dump logged "$tapt_feats/dump.log" serkit dump-features --upstream "$upstream" \
        --layers "$tapt_layer" --data "$data" --out "$tapt_feats" --device "$device"
      mark_done "$tapt_feats"
    fi
  fi
  for k in $fold_list; do
    fold=$splits/fold$k; out=$exp/teacher/fold$k
    log "Stage 1: teacher fold $k: finetune $(basename "$upstream") on $fold ($teacher_pooling pooling) -> $out; dump layer $layer -> $out/layer$layer"
    start=$upstream
    if [ -n "$tapt_km" ]; then
      opts="km=$tapt_km layer=$tapt_layer feats=$tapt_feats"
      is_done "$exp/tapt_km/fold$k" "$opts" "$tapt_km" "$tapt_feats" "$splits" || {
        log "Stage 1: TAPT labels fold $k: $(basename "$tapt_km") on layer $tapt_layer -> $exp/tapt_km/fold$k"
        timed "tapt_km_fold$k" serkit kmeans apply --model "$tapt_km" --layer "$tapt_layer" --feats "$tapt_feats" \
          --fold "$fold" --splits train,valid,test --out "$exp/tapt_km/fold$k"
        mark_done "$exp/tapt_km/fold$k"; }
    fi
    tapt_dir=$tapt_labels; [ -z "$tapt_km" ] || tapt_dir=$exp/tapt_km
    if [ -n "$tapt_dir" ]; then
      labels=$tapt_dir; [ -d "$labels/fold$k" ] && labels=$labels/fold$k
      for sp in train valid; do
        [ -f "$labels/$sp.km" ] || die "--tapt-labels: $labels/$sp.km missing (expected DIR/fold$k/$sp.km, as stage 2 writes)"
        [ "$(wc -l < "$labels/$sp.km")" -eq "$(($(wc -l < "$fold/$sp.tsv") - 1))" ] ||
          die "--tapt-labels: $labels/$sp.km has $(wc -l < "$labels/$sp.km") lines, $fold/$sp.tsv $(($(wc -l < "$fold/$sp.tsv") - 1)) utterances; labels must be row-aligned with fold $k's manifests"
      done
      labels=$(realpath "$labels")
      opts="upstream=$upstream labels=$labels updates=$cpt_updates config=$cpt_config update_freq=$cpt_update_freq"
      is_done "$exp/tapt/fold$k" "$opts" "$upstream" "$labels" "$splits" "$cpt_config" || {
        log "Stage 1: TAPT fold $k: $cpt_batch"
        tb "$exp/tapt/fold$k"
        timed "tapt_fold$k" bash local/cpt.sh --yaml "$cpt_config" --fold "$fold" --labels "$labels" \
          --init "$upstream" --updates "$cpt_updates" --update-freq "$cpt_update_freq" --out "$exp/tapt/fold$k" "${tb[@]}"
        mark_done "$exp/tapt/fold$k"; }
      start=$(realpath "$exp/tapt/fold$k/checkpoint_last.pt")
    fi
    opts="upstream=$start epochs=$teacher_epochs lr=$finetune_lr pooling=$teacher_pooling"
    is_done "$out" "$opts" "$start" "$splits" conf/flea.yaml || {
      tb "$out"
      timed "teacher_fold$k" logged "$out/log/train.log" serkit train conf/flea.yaml --fold-dir "$fold" --output-folder "$out" \
        --upstream "$start" --pooling "$teacher_pooling" --number_of_epochs "$teacher_epochs" "${lr_opt[@]}" \
        --device "$device" --noprogressbar "${tb[@]}"
      logged "$out/log/export.log" serkit export-upstream --exp "$out" --out "$out/upstream.pt"
      mark_done "$out"; }
    opts="layer=$layer"
    is_done "$out/layer$layer" "$opts" "$out" || {
      timed "dump_fold$k" logged "$out/log/dump.log" serkit dump-features --upstream "$out/upstream.pt" --layers "$layer" \
        --data "$fold/train.tsv" "$fold/valid.tsv" "$fold/test.tsv" --out "$out/layer$layer" --device "$device"
      mark_done "$out/layer$layer"; }
  done
  teacher="teacher (HuBERT finetuned, $teacher_pooling pooling)"
  [ -z "$tapt_labels" ] || teacher="teacher (HuBERT TAPT on $tapt_labels, then finetuned, $teacher_pooling pooling)"
  [ -z "$tapt_km" ] || teacher="teacher (HuBERT TAPT on $(basename "$tapt_km") labels of layer $tapt_layer, batch $cpt_batch, then finetuned, $teacher_pooling pooling)"
  run_json "$exp/teacher" method="$teacher" setting=finetune \
    protocol="$protocol" upstream="$(upstream_label)" config=conf/flea.yaml selection=valid_test_mean
fi

###############################################################################
if $flea && stage_selected 2; then
  for k in $fold_list; do
    fold=$splits/fold$k; feats=$exp/teacher/fold$k/layer$layer; out=$exp/km/fold$k
    fit_splits=train; trans=()
    if $transductive; then fit_splits=train,valid,test; trans=(--transductive); fi
    log "Stage 2: k-means fold $k: $feats, fitted on the frames of split(s) $fit_splits$($transductive && echo ' (transductive: held-out audio included)') -> $out"
    opts="layer=$layer k=$nclusters transductive=$transductive fit_splits=$fit_splits"
    is_done "$out" "$opts" "$feats" "$splits" || {
      timed "kmeans_fold$k" serkit kmeans fit --feats "$feats" --fold "$fold" --split "$fit_splits" --layer "$layer" \
        --n-clusters "$nclusters" --out "$out/km.model" "${trans[@]}"
      serkit kmeans apply --model "$out/km.model" --feats "$feats" --fold "$fold" --splits train,valid,test --out "$out"
      mark_done "$out"; }
    log "Stage 2: fold $k: k-means frames per split: $(python -c 'import json, sys; print(json.load(open(sys.argv[1]))["fit_frames_per_split"])' "$out/km.json")"
  done
fi

###############################################################################
if $flea && stage_selected 3; then
  for k in $fold_list; do
    fold=$splits/fold$k; out=$exp/cpt/fold$k
    log "Stage 3: continued pretraining fold $k: $(basename "$upstream") + $exp/km/fold$k -> $out; batch: $cpt_batch"
    opts="upstream=$upstream k=$nclusters updates=$cpt_updates config=$cpt_config update_freq=$cpt_update_freq"
    is_done "$out" "$opts" "$upstream" "$exp/km/fold$k" "$splits" "$cpt_config" || {
      tb "$out"
      timed "cpt_fold$k" bash local/cpt.sh --yaml "$cpt_config" --fold "$fold" --labels "$exp/km/fold$k" \
        --init "$upstream" --updates "$cpt_updates" --update-freq "$cpt_update_freq" --out "$out" "${tb[@]}"
      mark_done "$out"; }
  done
fi

# MFSN (stage 4): TEC and SEC features dumped once, then per fold two `serkit train` calls: the search
# (writes arch.txt) and the retraining of the derived cell (--arch).
# --mfsn-tec text|asr: serkit's text ablation (not the paper's), TEC from transcripts (conf/mfsn_text*.yaml).
run_mfsn() {
  local tec=${tec_upstream:-} sec=${sec_upstream:-} sec_label tec_label label run k fold out opts
  local -a tec_args tec_inputs
  if $mini; then
    tec=${tec:-$upstream}; sec=${sec:-$upstream}
    sec_label="tiny HuBERT pretrained on a separate mini corpus (NOT data2vec) L$sec_layers"
    tec_label="tiny HuBERT (NOT wav2vec 2.0) L$tec_layer"
  else
    [ -n "$sec" ] || die "--method mfsn needs --sec-upstream (data2vec audio)"
    [ "$mfsn_tec" = text ] || [ -n "$tec" ] || die "--method mfsn needs --tec-upstream (CTC wav2vec 2.0)"
    sec=$(realpath "$sec"); tec=${tec:+$(realpath "$tec")}
    sec_label="$(basename "$sec") L$sec_layers"; tec_label="$(basename "${tec:-none}") L$tec_layer"
  fi
  local sec_feats tec_feats="" search arch
  local -a train ablation_args
  sec_feats=$(dump_all "$sec")
  case $mfsn_tec in
    audio)
      label="TEC $tec_label (detached) + SEC $sec_label"
      if $mini; then  # the demo's label, unchanged
        label="tiny HuBERT pretrained on a separate mini corpus (NOT wav2vec 2.0/data2vec): TEC L$tec_layer, SEC L$sec_layers"
      fi
      tec_feats=$(dump_all "$tec"); tec_args=(--tec_feats "$tec_feats"); tec_inputs=("$tec_feats") ;;
    text)
      [ -s "$data/text" ] || die "$data/text: no transcripts; re-run stage 0 (serkit prepare writes them from dialog/transcriptions)"
      label="TEC IEMOCAP's transcripts + SEC $sec_label"
      tec_args=(--text "$(realpath "$data/text")"); tec_inputs=("$data/text") ;;
    asr)
      [ -n "$ctc_dict" ] && [ -f "$ctc_dict" ] || die "--mfsn-tec asr needs --ctc-dict FILE (the dict.ltr.txt of $tec)"
      label="TEC greedy CTC transcripts of $tec_label + SEC $sec_label"
      tec_feats=$(dump_all "$tec")
      tec_args=(--tec_feats "$tec_feats" --ctc_checkpoint "$tec" --ctc_dict "$(realpath "$ctc_dict")")
      tec_inputs=("$tec_feats" "$tec" "$ctc_dict") ;;
  esac
  local -a overlay_args=()
  local o; for o in "${mfsn_overlays[@]}"; do overlay_args+=(--overlay "$o"); done
  run=$(mfsn_run "$mfsn_tec")
  log "Stage 4: MFSN ($mfsn_ablation, TEC: $mfsn_tec): knowledge sources $label"
  for k in $fold_list; do
    fold=$splits/fold$k; out=$run/fold$k; search=${run}_search/fold$k
    case $mfsn_ablation in
      mfsn_single) ablation_args=(--ablation mfsn --streams single) ;;
      *) ablation_args=(--ablation "$mfsn_ablation") ;;
    esac
    # The label is a YAML string: quoted, since it holds ': '.
    train=(serkit train "$mfsn_config" "${overlay_args[@]}" --fold-dir "$fold" --feats "$sec_feats" "${tec_args[@]}"
           "${ablation_args[@]}" --device "$device" --tec_layer "$tec_layer" --sec_layers "[$sec_layers]"
           --sources_label "\"$label\"" --noprogressbar)
    opts="tec=$mfsn_tec:${tec:-none}:$tec_layer sec=$sec:$sec_layers config=$mfsn_config${mfsn_overlays[*]:+ overlays=${mfsn_overlays[*]}} ablation=$mfsn_ablation"  # epochs: the config's
    arch=""
    if [ "${mfsn_ablation%_single}" = mfsn ]; then  # search, then retrain the derived cell: two serkit train calls
      log "Stage 4: MFSN search fold $k: $fold -> $search/arch.txt"
      is_done "$search" "$opts" "$sec_feats" "${tec_inputs[@]}" "$splits" "$mfsn_config" "${mfsn_overlays[@]}" || {
        tb "$search"
        timed "$(basename "$run")_search_fold$k" logged "$search/log/train.log" "${train[@]}" --output-folder "$search" "${tb[@]}"
        mark_done "$search"; }
      arch=$(cat "$search/arch.txt")
    fi
    log "Stage 4: MFSN fold $k${arch:+ (derived cell $arch)}: $fold -> $out"
    is_done "$out" "$opts arch=$arch" "$sec_feats" "${tec_inputs[@]}" "$splits" "$mfsn_config" "${mfsn_overlays[@]}" || {
      tb "$out"
      timed "$(basename "$run")_fold$k" logged "$out/log/train.log" "${train[@]}" --output-folder "$out" ${arch:+--arch "$arch"} "${tb[@]}"
      mark_done "$out"; }
  done
  local what="MFSN ($mfsn_ablation)"
  case $mfsn_tec in
    text) what="MFSN ($mfsn_ablation, TEC from the transcripts; text leaks across sessions)" ;;
    asr) what="MFSN ($mfsn_ablation, TEC from greedy CTC transcripts; text leaks across sessions)" ;;
  esac
  run_json "$run" method="$what" setting=featex protocol="$protocol" upstream="$label" \
    config="$mfsn_config${mfsn_overlays[*]:+ + ${mfsn_overlays[*]}}" selection=valid
}

###############################################################################
if stage_selected 4; then
  if $flea; then
    for p in $poolings; do
      run=$exp/flea_$p
      for k in $fold_list; do
        fold=$splits/fold$k; cpt=$(realpath "$exp/cpt/fold$k/checkpoint_last.pt"); out=$run/fold$k
        log "Stage 4: FLEA finetune fold $k ($p pooling): $cpt -> $out"
        opts="cpt=$cpt pooling=$p epochs=$finetune_epochs lr=$finetune_lr"
        is_done "$out" "$opts" "$exp/cpt/fold$k" "$splits" conf/flea.yaml || {
          tb "$out"
          timed "flea_${p}_fold$k" logged "$out/log/train.log" serkit train conf/flea.yaml --fold-dir "$fold" --output-folder "$out" \
            --upstream "$cpt" --pooling "$p" --number_of_epochs "$finetune_epochs" "${lr_opt[@]}" \
            --device "$device" --noprogressbar "${tb[@]}"
          mark_done "$out"; }
      done
      run_json "$run" method="FLEA ($p pooling)" setting=finetune protocol="$protocol" \
        upstream="CPT-$(upstream_label), CPT batch $cpt_batch, layer $layer, k=$nclusters, $(km_label)" \
        config=conf/flea.yaml selection=valid_test_mean
    done
  fi
  for h in "${heads[@]}"; do
    if [ "$h" = mfsn ]; then run_mfsn; continue; fi
    h_overrides=$head_overrides; h_label=$h
    case $h in linear|ffn|cnn|shiftcnn|transformer|shiftformer|lstm|shiftlstm)
      h_overrides="${input_overrides:+$input_overrides }$head_overrides"
      run=$exp/${h}_$setting$input_tag
      [ -z "$input_overrides" ] || h_label="$h ($shiftser_input input: $input_overrides)" ;;
    *) run=$exp/${h}_$setting ;;
    esac
    feats=""
    if [ "$setting" = featex ]; then
      log "Stage 4: $h needs cached features of $(basename "$upstream")"
      feats=$(dump_all "$upstream")
    fi
    for k in $fold_list; do
      fold=$splits/fold$k; out=$run/fold$k
      log "Stage 4: $h ($setting) fold $k: $fold -> $out"
      # BAS and its baselines: --bas-layers layers; the mini corpus's SpecAugment width is not theirs
      overrides=$h_overrides; bas_opts=()
      case "$h" in bas*) ${mini_specaugment:-false} && overrides="" ;; esac
      case "$h" in
        bas) bas_opts=(--search-overrides "--search_layers $bas_layers $search_overrides") ;;
        bas_msa_ffn) overrides="--arch msa_ffn$(for ((i = 1; i < bas_layers; i++)); do printf ,msa_ffn; done) $overrides" ;;
        bas_transformer) overrides="--transformer_layers $bas_layers $overrides" ;;
      esac
      opts="upstream=$upstream setting=$setting epochs=$head_epochs overrides=$overrides${bas_opts[*]:+ ${bas_opts[*]}}"
      is_done "$out" "$opts" "$upstream" "$feats" "$splits" "$(head_conf "$h")" "$(head_search_conf "$h")" || {
        tb "$out"
        if [ "$setting" = featex ]; then
          timed "${h}_fold$k" logged "$out/log/train.log" bash local/train_head.sh --method "$h" --fold "$fold" --out "$out" \
            --feats "$feats" --epochs "$head_epochs" --device "$device" --overrides "$overrides" "${bas_opts[@]}" "${tb[@]}"
        else
          timed "${h}_fold$k" logged "$out/log/train.log" bash local/train_head.sh --method "$h" --fold "$fold" --out "$out" \
            --upstream "$upstream" --epochs "$head_epochs" --device "$device" --overrides "$overrides" "${bas_opts[@]}" "${tb[@]}"
        fi
        mark_done "$out"; }
    done
    run_json "$run" method="$h_label" setting="$setting" protocol="$protocol" upstream="$(upstream_label)" \
      config="$(head_conf "$h")" selection="$(case $h in bas*|mfsn) echo valid ;; *) echo best_test ;; esac)"
  done
fi

###############################################################################
if stage_selected 5; then
  runs=(); beside=()
  $flea && runs+=("$exp/teacher") && for p in $poolings; do runs+=("$exp/flea_$p"); done
  for h in "${heads[@]}"; do
    case $h in
      linear|ffn|cnn|shiftcnn|transformer|shiftformer|lstm|shiftlstm) runs+=("$exp/${h}_$setting$input_tag"); continue ;;
      bas|bas_ffn|bas_msa_ffn|bas_transformer) runs+=("$exp/${h}_$setting"); continue ;;
    esac
    runs+=("$(mfsn_run "$mfsn_tec")")
    # MFSN runs with the other TEC sources, scored earlier, go beside it: the text-vs-audio gap in one table
    for t in audio text asr; do
      [ "$t" != "$mfsn_tec" ] && [ -f "$(mfsn_run $t)/results.json" ] && beside+=("$(mfsn_run $t)")
    done
  done
  log "Stage 5: scoring (${selection} selection): ${runs[*]}"
  for r in "${runs[@]}"; do
    timed "score_$(basename "$r")" serkit score "$r" --selection "$selection" > /dev/null
  done
  log "Results of this run${beside[*]:+ (and, for comparison, ${beside[*]##*/})}:"
  serkit results "${runs[@]}" "${beside[@]}"
  # The experiment's table lists every run scored under it so far, this invocation's and earlier ones.
  mapfile -t scored < <(find "$exp" -mindepth 2 -maxdepth 2 -name results.json -printf '%h\n' | sort)
  serkit results "${scored[@]}" --out "$exp/RESULTS.md" > /dev/null
  log "All runs of $exp: $exp/RESULTS.md; per-run details: <run>/RESULTS.md, confusion.png"
  if [ -f "$timing_file" ]; then
    log "Where the time went in this run (seconds per step, summed over folds):"
    sed -E 's/_fold[0-9]+\t/\t/' "$timing_file" \
      | awk -F'\t' '{t[$1]+=$2; s+=$2} END {for (k in t) printf "%8d  %s\n", t[k], k; printf "%8d  total\n", s}' \
      | sort -k1,1nr >&2
  fi
fi
