#!/usr/bin/env bash
# shellcheck disable=SC2154  # corpus, prepare_name, ... are set by the recipe's run.sh before it sources this
# The recipe template: every recipes/<corpus>/run.sh sets its corpus defaults and sources this file,
# which owns the options, the stages, the .done records, locking, logging and timing (ESPnet's
# egs2/TEMPLATE/asr1/asr.sh in spirit). A run.sh cds to its directory (the template sources its
# path.sh and db.sh) and sets, before `. ../../local/ser.sh`:
#
#   corpus=IEMOCAP                 # the name in run.json and messages; db.sh's variable of that name is the release
#   prepare_name=iemocap           # `serkit prepare` / `serkit mini-corpus` corpus name
#   mini_release=IEMOCAP_full_release   # the release folder `serkit mini-corpus` writes
#   corpus_protocols="iemocap_loso5 iemocap_loso10"   # the `serkit split` protocols this corpus has
#   headline=ua                    # the metric the table leads with and validation selects on (ua | wf1)
#   default_method=flea; mini_method=flea,shiftcnn    # --method defaults (real corpus; mini corpus)
#   prepare_options() { echo --jobs; echo "$nj"; }   # extra `serkit prepare` options, one a line (optional)
#   method_aliases="ffn=bas_ffn"   # the corpus's names of template methods (optional); runs are named by them
#   corpus_help="  --nj N ..."     # --help lines of the options the run.sh declares itself (optional)
#   mini_defaults() { ...; }       # defaults on the mini corpus only, e.g. valid_fraction=${valid_fraction:-0.25} (optional)
#   and any option below as name=value (a corpus default; the command line overrides it)
#
# Stages (each logs what it reads and writes, records its options and inputs in a .done marker and
# resumes; each runs per fold as a job of the backend, see local/backend.sh):
#   0  data: prepare the corpus, write the folds (and, on the mini corpus, build the tiny HuBERT)
#   1  FLEA teacher: finetune the upstream for SER per fold, dump its layer --layer
#   2  FLEA k-means pseudo labels (faiss) fitted on the fold's training frames (--transductive true:
#      on all of its splits' frames), labels for all splits
#   3  FLEA: HuBERT continued pretraining on the pseudo labels (fairseq-hydra-train + serkit user-dir)
#   4  finetune: the continued model with attention/mean pooling (FLEA), and every other --method
#      (ShiftSER heads, BAS and its baselines, MFSN) on cached features or the finetuned upstream
#   5  score every run and print one table
#
# Jobs: the run that a user starts (the driver) holds the workdir lock, runs stage 0 as one job and
# then submits one job per (step, fold): the recipe itself re-entered with --stage S --stop-stage S
# --folds K --job STEP, its dependencies (the fold's previous stage, shared feature dumps) passed to
# backend_submit. With --backend local each job runs at once, in the order today's stages always ran.

set -euo pipefail
# the recipe's environment and corpus location (its directory is the working directory)
# shellcheck source=/dev/null
. ./path.sh
# shellcheck source=/dev/null
. ./db.sh
_ser_local=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=stage.sh
. "$_ser_local/stage.sh"
# shellcheck source=backend.sh
. "$_ser_local/backend.sh"
_ser_script=$PWD/$(basename "$0")
_ser_args=("$@")

############################################################################### options
# A corpus default set by run.sh wins over the template's (`: "${x=v}"` keeps a value already set).
: "${stage=0}"
: "${stop_stage=5}"
: "${root=}"                # corpus release directory; default: db.sh, else the mini corpus
: "${upstream=}"            # fairseq checkpoint or, for the heads, a Hugging Face directory; mini: tiny HuBERT
: "${protocol=${corpus_protocols%% *}}"
: "${valid=stratified}"     # iemocap_loso5 validation: stratified | speaker
: "${valid_fraction=}"      # stratified validation share [serkit split's 0.1]
: "${folds=all}"            # all | comma list
: "${method=}"              # [default_method; mini corpus: mini_method]
: "${bas_layers=4}"
: "${search_overrides=}"
: "${setting=featex}"
: "${layer=9}"
: "${nclusters=50}"
: "${pooling=both}"
: "${transductive=false}"
: "${tapt_km=}"
: "${tapt_layer=9}"
: "${tapt_labels=}"
: "${teacher_pooling=mean}"
: "${cpt_update_freq=auto}"
: "${selection=valid}"
: "${teacher_epochs=}"
: "${finetune_epochs=}"
: "${head_epochs=}"
: "${cpt_updates=}"
: "${cpt_config=}"
: "${finetune_lr=}"
: "${device=auto}"
: "${tag=}"
: "${workdir=.}"
: "${tec_upstream=}"
: "${sec_upstream=}"
: "${tec_layer=}"
: "${sec_layers=}"
: "${mfsn_config=}"
: "${mfsn_overlay=}"
: "${mfsn_ablation=mfsn}"
: "${mfsn_tec=audio}"
: "${ctc_dict=}"
: "${head_overrides=}"
: "${shiftser_input=masked}"
: "${backend=local}"
: "${nshard=1}"
: "${job=}"
: "${headline=ua}"
: "${best_metric=}"
: "${layers=all}"
: "${search_epochs=}"
: "${mfsn_epochs=}"
: "${batch_size=}"
: "${model_dim=}"
: "${ffn_residual=false}"
: "${mfsn_overrides=}"
: "${method_aliases=}"
: "${corpus_help=}"
: "${tensorboard=}"

_all_methods="flea linear ffn cnn shiftcnn transformer shiftformer lstm shiftlstm bas bas_ffn bas_msa_ffn bas_transformer mfsn"
help_message=$(cat <<EOM
Usage: $0 [options]
Runs the $corpus recipe; with no corpus in db.sh and no --root it builds the mini corpus and a tiny
HuBERT and runs end to end on CPU.

Options (default in brackets):
  --stage N / --stop-stage M   run stages N..M [$stage..$stop_stage]
  --root DIR          $mini_release directory [db.sh: ${!corpus:-none}]
  --upstream PATH     fairseq HuBERT checkpoint (e.g. hubert_base_ls960.pt), or for the heads (not FLEA) a local
                      Hugging Face model directory (WavLM-Large: microsoft/wavlm-large, the BAS paper's best
                      row; needs serkit[hf]) [tiny HuBERT on the mini corpus]
  --protocol NAME     ${corpus_protocols// / | } | all (each in turn) [$protocol]
  --valid KIND        iemocap_loso5 validation set: stratified | speaker [$valid]
  --valid-fraction F  stratified validation share of the training utterances [${valid_fraction:-0.1}]
  --folds LIST        all | 1,3,... [$folds]
  --method LIST       flea and/or heads: linear ffn cnn shiftcnn transformer shiftformer lstm shiftlstm bas
                      bas_ffn bas_msa_ffn bas_transformer mfsn [$default_method; mini corpus: $mini_method].
                      BAS and its baselines train with BAS's settings (SGD 0.005, batch 32, 100 epochs):
                      bas = search + retrain, bas_ffn = simple-FFN, bas_msa_ffn = BAS's blocks all msa_ffn
                      (the like-for-like transformer), bas_transformer = serkit's transformer head;
                      ffn and transformer are the same heads with ShiftSER's settings${method_aliases:+
                      (here, as $corpus names them: ${method_aliases// /, })}
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
                      [40, 40, 100, 20000, the shared fairseq/cpt_hubert_base.yaml, the shared flea.yaml's 1e-4;
                      mini corpus: 10, 10, 30, 150, fairseq/cpt_hubert_tiny.yaml, 1e-3]
  --device D          auto | cpu | cuda [$device]
  --tag NAME          experiment directory exp/NAME [protocol]
  --workdir DIR       where data/, dump/, exp/ and db/ go [this recipe's directory]
  --tec-upstream FILE, --sec-upstream FILE, --tec-layer L, --sec-layers L1,L2,L3, --mfsn-config FILE, --mfsn-overlay FILE[,FILE],
  --mfsn-ablation sec_only|sec_tec_nosearch|mfsn|mfsn_single    MFSN (--method mfsn; mfsn_single: serkit's
                      single-stream ablation) [12, 4,8,12, the shared mfsn.yaml (text/asr TEC: conf/mfsn_text.yaml);
                      mini corpus: the tiny HuBERT, 2, 0,1,2, with the overlay mfsn_mini.yaml (text/asr TEC:
                      and conf/mfsn_text_mini.yaml)]
  --mfsn-tec SOURCE   MFSN TEC: audio | text (the corpus transcripts) | asr (greedy CTC, needs --ctc-dict)
                      [$mfsn_tec]; text and asr are serkit's text ablation, not the paper's (text leaks across sessions)
  --ctc-dict FILE     dict.ltr.txt of the CTC --tec-upstream, for --mfsn-tec asr
  --head-overrides S  extra yaml overrides for the heads' training (ShiftSER's and BAS's), e.g. "--batch_size 16":
                      each --key goes to the heads whose configs have it (--channel_mask_width: the ShiftSER
                      heads only, BAS's configs have no SpecAugment); a key no chosen head's config has fails
  --shiftser-input K  what heads linear..shiftlstm see: masked (whole utterances, padding masked) |
                      paper (clipped to 7.5 s) | official (first 7.5 s zero-padded to 7.5 s, no mask) [$shiftser_input]
  --headline M        the metric validation selects on and the table leads with: ua | wf1 [$headline]
  --best-metric M     validation metric of the checkpoint each head keeps: ua | weighted_f1 [the configs': ua]
  --layers L          upstream layers the heads' features hold: all | a comma list (0 = the CNN output) [$layers]
  --search-epochs N   BAS and MFSN architecture-search epochs [BAS: --head-epochs; MFSN: the config's]
  --mfsn-epochs N     MFSN training epochs (the retrain of the derived cell, and the ablations) [the config's]
  --batch-size N      batch size of the heads and MFSN [the configs']
  --model-dim D       width of BAS's searched blocks (bas, bas_msa_ffn) [the config's 256]
  --ffn-residual B    BAS FFN candidate with a residual, LN(x + FFN(x)): true | false [$ffn_residual; false is the
                      paper's "FFN without residual connection"]
  --mfsn-overrides S  extra yaml overrides for MFSN, e.g. "--cache_in_memory True"
  --tensorboard DIR   also write every training's losses and metrics as TensorBoard events to DIR/<run>/fold<k>
                      (serkit train --tensorboard, fairseq common.tensorboard_logdir; needs serkit[tensorboard])
  --backend B         how the jobs run: local (one after another, here) | slurm (local/backend_slurm.sh;
                      resources in cmd.sh) [$backend]
  --nshard N          feature dumps as N jobs (serkit dump-features --shard) [$nshard]
  --job STEP          (internal) run one step of the stages as a job of the run that holds the workdir
  --options-file FILE options from FILE's name=value lines (e.g. 'nclusters=100'), read in place
${corpus_help}
EOM
)
# shellcheck source=parse_options.sh
. "$_ser_local/parse_options.sh"
[ $# -eq 0 ] || die "unexpected argument '$1' (see --help)"
[ -z "$job" ] || _ser_quiet=true
# Configs several corpora use live once, with serkit (serkit config lists them); a recipe's conf/ holds its own.
shared_conf=../../plugins/serkit/conf
flea_conf=$shared_conf/flea.yaml  # FLEA's finetuning (teacher and FLEA); its CPT: $shared_conf/fairseq/
log_setup() { ${_ser_quiet:-false} || log "$@"; }

check_options() {
  local v
  check_stages "$stage" "$stop_stage" 5
  local -a protocols; read -r -a protocols <<< "$corpus_protocols"
  for v in ${protocol//,/ }; do check_choice --protocol "$v" "${protocols[@]}" all both; done
  check_choice --valid "$valid" stratified speaker
  check_choice --setting "$setting" featex finetune
  check_choice --selection "$selection" valid paper best_test valid_test_mean
  check_choice_list --mfsn-ablation "$mfsn_ablation" sec_only sec_tec_nosearch mfsn mfsn_single
  check_choice --headline "$headline" ua wf1
  check_choice --backend "$backend" local slurm
  [ -z "$folds" ] || check_folds_spec "$folds"
  # shellcheck disable=SC2086,SC2046
  [ -z "$method" ] || check_choice_list --method "$method" $_all_methods $(for v in $method_aliases; do echo "${v%%=*}"; done)
  [ -z "$best_metric" ] || check_choice --best-metric "$best_metric" ua weighted_f1
  [ "$layers" = all ] || check_int_list --layers "$layers"
  check_choice --ffn-residual "$ffn_residual" true false
  for v in search_epochs mfsn_epochs batch_size model_dim; do [ -z "${!v}" ] || check_int "--${v//_/-}" "${!v}" 1; done
  if [ -n "${config+set}" ]; then  # a recipe's --config: the MFSN config (SAVEE's name for --mfsn-config)
    [ -z "$config" ] || [ -f "$config" ] || die "--config $config: no such file"
  fi
  check_int --layer "$layer"; check_int --nclusters "$nclusters" 2; check_device "$device"; check_int --nshard "$nshard" 1
  for v in teacher_epochs finetune_epochs head_epochs cpt_updates; do
    [ -z "${!v}" ] || check_int "--${v//_/-}" "${!v}" 1
  done
  [ -z "$finetune_lr" ] || check_number --finetune-lr "$finetune_lr"
  [ -z "$valid_fraction" ] || check_number --valid-fraction "$valid_fraction"
  [ -z "$tec_layer" ] || check_int --tec-layer "$tec_layer"
  [ -z "$sec_layers" ] || check_int_list --sec-layers "$sec_layers"
  [ -z "$tapt_labels" ] || [ -d "$tapt_labels" ] || die "--tapt-labels $tapt_labels: no such directory"
  for v in cpt_config mfsn_config ctc_dict; do [ -z "${!v}" ] || [ -f "${!v}" ] || die "--${v//_/-} ${!v}: no such file"; done
}
# check_layer: the layer FLEA clusters exists in the upstream (on the mini corpus: its last layer instead).
check_layer() {
  local n; n=$(serkit recipe num-layers "$upstream") || die "--upstream $upstream: not an upstream checkpoint serkit can load"
  [ "$layer" -gt "$n" ] || return 0
  $mini || die "--layer $layer: $(basename "$upstream") has $n layers (0 = the CNN output)"
  log "the tiny HuBERT has $n layers: clustering layer $n instead of $layer"; layer=$n
}

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
tensorboard=${tensorboard:+$(realpath -m "$tensorboard")}
backend_init "$_ser_local"
device_asked=$device  # --backend slurm: each job resolves auto on the node it runs on
if [ "$device" = auto ]; then
  device=$(python -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')
fi
# Resources of the jobs (partition, GPUs, ...) for the slurm backend: the recipe's cmd.sh, if any.
# shellcheck source=/dev/null
[ ! -f cmd.sh ] || . ./cmd.sh

mkdir -p "$workdir"; workdir=$(realpath "$workdir")
lock_workdir "$workdir"  # a job of the run holding the lock shares it (stage.sh: SERKIT_LOCK_TOKEN)
case "$protocol" in all|both) protocol=${corpus_protocols// /,} ;; esac
if [[ "$protocol" == *,* ]]; then  # several protocols: the recipe once per protocol, in turn
  for p in ${protocol//,/ }; do
    bash "$_ser_script" "${_ser_args[@]}" --protocol "$p" --tag "${tag:+$tag/}$p" \
      ${tensorboard:+--tensorboard "$tensorboard/$p"} || exit 1
  done
  exit 0
fi
root=${root:-${!corpus:-}}
mini=false
[ -n "$root" ] || mini=true
[ -n "$root" ] && [ ! -d "$root" ] && die "--root $root: no such directory (set $corpus in db.sh or pass --root)"
if $mini; then
  [ "$mfsn_tec" != asr ] || die "--mfsn-tec asr needs a CTC-finetuned wav2vec 2.0 (--tec-upstream) and --ctc-dict; the mini corpus has no ASR model (use --mfsn-tec text)"
  log_setup "No corpus given (db.sh $corpus / --root): running on the mini corpus with a tiny HuBERT on $device."
  # Tiny models gain nothing from a second thread, and torch's spinning threads slow down tenfold
  # when another process shares the cores: one thread per process keeps the demo's time predictable.
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  root=$workdir/db/mini_$prepare_name/$mini_release
  method=${method:-$mini_method}
  # the tiny HuBERT learns nothing in 10 epochs at the paper's 1e-4
  finetune_lr=${finetune_lr:-0.001}
  # SpecAugment's channel masks scaled from ShiftSER's 64 of 768 channels to the tiny model's 64
  # (ShiftSER heads only: BAS's yamls have no SpecAugment)
  [ -n "$head_overrides" ] || mini_specaugment=true
  head_overrides=${head_overrides:-"--channel_mask_width 5"}
  # BAS search, ours for the mini corpus only: short epochs settle only with a faster arch lr and a
  # cooler schedule than the defaults (SGD 0.005, FBNet's tau 5.0 * 0.956^epoch) made for real data
  # (the values measured on the mini MELD, recipes/MELD/README.md)
  search_overrides=${search_overrides:-"--arch_lr 0.5 --temperature_start 1.0 --temperature_decay 0.85"}
  teacher_epochs=${teacher_epochs:-10}; finetune_epochs=${finetune_epochs:-10}; head_epochs=${head_epochs:-30}
  cpt_updates=${cpt_updates:-150}; cpt_config=${cpt_config:-$shared_conf/fairseq/cpt_hubert_tiny.yaml}
  [ "$cpt_update_freq" != auto ] || cpt_update_freq=1  # the tiny model's batch is its own, not the paper's
  tec_layer=${tec_layer:-2}; sec_layers=${sec_layers:-0,1,2}
  if [ -z "$mfsn_config$mfsn_overlay${config:-}" ]; then  # the CPU-sized MFSN: overlays on the full config
    mfsn_overlay=$shared_conf/mfsn_mini.yaml; [ "$mfsn_tec" = audio ] || mfsn_overlay+=,conf/mfsn_text_mini.yaml
  fi
  if [ "$mfsn_tec" = audio ]; then mfsn_config=${mfsn_config:-$shared_conf/mfsn.yaml}; else mfsn_config=${mfsn_config:-conf/mfsn_text.yaml}; fi
  # the recipe's own mini-corpus defaults, if it has any (e.g. a larger validation share)
  if declare -F mini_defaults > /dev/null; then mini_defaults; fi
else
  method=${method:-$default_method}
  teacher_epochs=${teacher_epochs:-40}; finetune_epochs=${finetune_epochs:-40}; head_epochs=${head_epochs:-100}
  cpt_updates=${cpt_updates:-20000}; cpt_config=${cpt_config:-$shared_conf/fairseq/cpt_hubert_base.yaml}
  tec_layer=${tec_layer:-12}; sec_layers=${sec_layers:-4,8,12}
  if [ "$mfsn_tec" = audio ]; then mfsn_config=${mfsn_config:-$shared_conf/mfsn.yaml}; else mfsn_config=${mfsn_config:-conf/mfsn_text.yaml}; fi
  [ -n "$upstream" ] || [ "${method//,/ }" = mfsn ] || die "--upstream is required with a real corpus (e.g. --upstream /models/hubert_base_ls960.pt)"
fi
[ -z "$upstream" ] || [ -e "$upstream" ] || die "--upstream $upstream: no such file or directory"
upstream=${upstream:+$(realpath "$upstream")}
folds=${folds:-all}
[ -z "${config:-}" ] || mfsn_config=$config
mfsn_overlays=()
IFS=, read -r -a mfsn_overlays <<< "$mfsn_overlay"
for f in "${mfsn_overlays[@]}"; do [ -f "$f" ] || die "--mfsn-overlay $f: no such file"; done

flea=false; heads=()
declare -A head_of=()  # a method's name (the corpus's alias, if it has one) -> the template's head
for m in $method_aliases; do head_of[${m%%=*}]=${m#*=}; done
for m in ${method//,/ }; do
  case "$m" in
    flea) flea=true ;;
    *) heads+=("$m") ;;
  esac
done
# FLEA continues HuBERT's pretraining with fairseq: a Hugging Face directory serves the heads only.
! $flea || [ ! -d "$upstream" ] || die "--upstream $upstream is a directory (Hugging Face): FLEA needs a fairseq HuBERT checkpoint file; use it with heads (--method bas,...) only"
# The layer FLEA clusters must exist: checked now when the upstream is given, else once stage 0 built
# it (a job gets the layer its driver checked).
if [ -z "$job" ] && [ -n "$upstream" ] && [ "$stop_stage" -ge 1 ] && { $flea || $mini; }; then check_layer; fi

data=$workdir/data/$prepare_name
splits=$data/$protocol
tag=${tag:-$protocol}
exp=$workdir/exp/$tag
timing_file=$exp/timing.tsv
mkdir -p "$exp"
if [ -z "$job" ] || [ -z "${SERKIT_RUN_LOG:-}" ]; then log_to "$exp/run.log"; fi
[ -n "$job" ] || : > "$timing_file"
lr_opt=(); [ -n "$finetune_lr" ] && lr_opt=(--lr "$finetune_lr")

# run_json DIR key=value...: the run's description, read by `serkit score` for RESULTS.md.
run_json() {
  local dir=$1; shift
  serkit recipe run-json "$dir/run.json" corpus="$corpus" "$@" ${headline_json:+headline=$headline}
}
headline_json=""; [ "$headline" = ua ] || headline_json=true
# feats_dir CKPT [LAYERS]: where dump_feats puts LAYERS (default all) of CKPT for every utterance of $data.
feats_dir() {
  local l=${2:-all}
  echo "$workdir/dump/$(basename "${1%.*}")-$(echo "$1" | md5sum | cut -c1-6)/$([ "$l" = all ] && echo all_layers || echo "layers_${l//,/_}")"
}
# mfsn_run TEC_SOURCE [ABLATION]: the run directory of MFSN with that TEC source and ablation
# (default: the first of --mfsn-ablation).
mfsn_run() {
  local a=${2:-${mfsn_ablation%%,*}}
  case $1 in audio) echo "$exp/mfsn_$a" ;; *) echo "$exp/mfsn_$1_$a" ;; esac
}
# tb OUT: the --tensorboard option of the training that writes OUT (events in DIR/<OUT below exp>)
tb() { tb=(); [ -z "$tensorboard" ] || tb=(--tensorboard "$tensorboard/${1#"$exp"/}"); }
# head_conf HEAD: the config that trains HEAD (local/train_head.sh picks its --method).
head_conf() { case $1 in bas*) echo "$shared_conf/bas.yaml" ;; *) echo "$shared_conf/shiftser.yaml" ;; esac; }
# head_search_conf HEAD: the search config a head reads besides its head_conf (BAS), or nothing.
head_search_conf() { [ "$1" != bas ] || echo "$shared_conf/bas_search.yaml"; }
# head_overrides_of[METHOD]: the part of --head-overrides METHOD's configs take (each key goes to the
# heads whose configs have it; one that none of this run's heads has is refused, naming the option;
# a run without heads leaves them unused, as --search-overrides without bas).
declare -A head_overrides_of=()
_routes=()
for _m in "${heads[@]}"; do
  _h=${head_of[$_m]:-$_m}; [ "$_h" != mfsn ] || continue
  _routes+=("$_m=$(head_conf "$_h")$(_s=$(head_search_conf "$_h"); echo "${_s:+,$_s}")")
done
if [ -n "$head_overrides" ] && [ ${#_routes[@]} -gt 0 ]; then
  # the mini corpus's own SpecAugment width (not the user's) is dropped where no config has it
  _routed=$(serkit recipe route-overrides --option=--head-overrides --overrides "$head_overrides" \
    ${mini_specaugment:+--default} "${_routes[@]}") || exit 1
  while IFS=$'\t' read -r _m _o; do [ -z "$_m" ] || head_overrides_of[$_m]=$_o; done <<< "$_routed"
fi
upstream_label() { if $mini; then echo "tiny HuBERT (pretrained here on a separate mini corpus)"; else basename "$upstream"; fi; }
# head_run HEAD: the run directory of a head.
# head_run METHOD: the run directory of a method (named as the corpus names it, see method_aliases).
head_run() {
  case ${head_of[$1]:-$1} in
    linear|ffn|cnn|shiftcnn|transformer|shiftformer|lstm|shiftlstm) echo "$exp/${1}_$setting$input_tag" ;;
    *) echo "$exp/${1}_$setting" ;;
  esac
}
# cpt_batch: what one CPT update holds (fairseq's dataset.max_tokens is per GPU; the official code
# ran 4 GPUs x 87.5 s, 350 s of audio per update); sets cpt_update_freq when it was auto.
cpt_batch() {
  local out
  [ -f "$cpt_config" ] || die "--cpt-config $cpt_config: no such file"
  out=$(serkit recipe cpt-batch --config "$cpt_config" --update-freq "$cpt_update_freq") || exit 1
  cpt_update_freq=${out%%$'\t'*}; cpt_batch=${out#*$'\t'}
}

############################################################################### the steps
# Each step_* is one job: the driver submits it, the recipe re-entered with --job runs it.

step_data() {  # stage 0
  local opts
  log "Stage 0: data: $root -> $data -> $splits"
  if $mini; then
    opts="mini seed=0"
    is_done "$workdir/db/mini_$prepare_name" "$opts" || {
      timed mini_corpus serkit mini-corpus "$prepare_name" --out "$workdir/db/mini_$prepare_name" --seed 0
      mark_done "$workdir/db/mini_$prepare_name" "$opts"; }
  fi
  local -a popts=(); if declare -F prepare_options > /dev/null; then mapfile -t popts < <(prepare_options); fi
  opts="root=$(realpath "$root")"
  is_done "$data" "$opts" "$root" || {
    timed prepare serkit prepare "$prepare_name" --root "$root" --out "$data" "${popts[@]}"
    mark_done "$data"; }
  opts="protocol=$protocol valid=$valid${valid_fraction:+ valid_fraction=$valid_fraction}"
  is_done "$splits" "$opts" "$data" || {
    timed split serkit split "$protocol" "$data" --out "$splits" --valid "$valid" \
      ${valid_fraction:+--valid-fraction "$valid_fraction"}
    mark_done "$splits"; }
  serkit check-split "$splits"
  if $mini && [ -z "$upstream" ]; then
    timed tiny_upstream bash "$_ser_local/make_tiny_upstream.sh" --workdir "$workdir" --out "$workdir/exp/upstream"
  fi
}

# dump_opts CKPT LAYERS: the options a feature dump's .done record holds.
dump_opts() { echo "upstream=$1 data=$data$([ "$2" = all ] || echo " layers=$2")"; }
# ckpt_of ROLE: the checkpoint whose features a step reads: upstream (the heads'), sec or tec (MFSN's).
ckpt_of() {
  local tec sec label; local -a tec_args tec_inputs
  case $1 in
    upstream) echo "$upstream" ;;
    sec) mfsn_sources; echo "$sec" ;;
    tec) mfsn_sources; echo "$tec" ;;
    *) die "no checkpoint role '$1' (upstream, sec or tec)" ;;
  esac
}

# dump_feats ROLE [SHARD]: every layer of ROLE's checkpoint for every utterance of $data, dumped once
# (one shard of --nshard when SHARD is given: the step without SHARD then merges and records it).
step_dump_feats() {
  local ckpt dir l=all; ckpt=$(ckpt_of "$1"); [ "$1" != upstream ] || l=$layers; dir=$(feats_dir "$ckpt" "$l")
  if [ -n "${2:-}" ]; then
    timed "dump_$(basename "${ckpt%.*}")_shard$2" logged "$dir.shard$2.log" serkit dump-features --upstream "$ckpt" \
      --layers "$l" --data "$data" --out "$dir" --device "$device" --shard "$2" --nshard "$nshard"
    return
  fi
  if ! is_done "$dir" "$(dump_opts "$ckpt" "$l")" "$ckpt" "$data"; then
    log "  features of $([ "$l" = all ] && echo every layer || echo "layers $l") of $ckpt for all of $data -> $dir"
    timed "dump_$(basename "${ckpt%.*}")" logged "$dir/dump.log" serkit dump-features --upstream "$ckpt" \
      --layers "$l" --data "$data" --out "$dir" --device "$device"
    mark_done "$dir"
  fi
}

tapt_feats() { echo "$workdir/dump/$(basename "${upstream%.*}")-$(echo "$upstream" | md5sum | cut -c1-6)/layer$tapt_layer"; }
step_tapt_dump() {  # stage 1, TAPT labels: the published k-means model on --upstream's layer, all folds
  local feats; feats=$(tapt_feats)
  if ! is_done "$feats" "upstream=$upstream data=$data layer=$tapt_layer" "$upstream" "$data"; then
    log "Stage 1: TAPT: layer $tapt_layer of $upstream for all of $data -> $feats"
    timed tapt_dump logged "$feats/dump.log" serkit dump-features --upstream "$upstream" \
      --layers "$tapt_layer" --data "$data" --out "$feats" --device "$device"
    mark_done "$feats"
  fi
}

# train_flea NAME FOLD OUT UPSTREAM POOLING EPOCHS: flea.yaml's finetuning (the teacher's, FLEA's).
train_flea() {
  tb "$3"
  timed "$1" logged "$3/log/train.log" serkit train "$flea_conf" --fold-dir "$2" --output-folder "$3" \
    --upstream "$4" --pooling "$5" --number_of_epochs "$6" "${lr_opt[@]}" --device "$device" --noprogressbar "${tb[@]}"
}

step_teacher() {  # stage 1, fold K: (TAPT,) finetune the upstream, dump its layer --layer
  local k=$1 fold=$splits/fold$1 out=$exp/teacher/fold$1 start=$upstream opts tapt_dir labels
  log "Stage 1: teacher fold $k: finetune $(basename "$upstream") on $fold ($teacher_pooling pooling) -> $out; dump layer $layer -> $out/layer$layer"
  if [ -n "$tapt_km" ]; then
    opts="km=$tapt_km layer=$tapt_layer feats=$(tapt_feats)"
    is_done "$exp/tapt_km/fold$k" "$opts" "$tapt_km" "$(tapt_feats)" "$splits" || {
      log "Stage 1: TAPT labels fold $k: $(basename "$tapt_km") on layer $tapt_layer -> $exp/tapt_km/fold$k"
      timed "tapt_km_fold$k" serkit kmeans apply --model "$tapt_km" --layer "$tapt_layer" --feats "$(tapt_feats)" \
        --fold "$fold" --splits train,valid,test --out "$exp/tapt_km/fold$k"
      mark_done "$exp/tapt_km/fold$k"; }
  fi
  tapt_dir=$tapt_labels; [ -z "$tapt_km" ] || tapt_dir=$exp/tapt_km
  if [ -n "$tapt_dir" ]; then
    labels=$tapt_dir; [ -d "$labels/fold$k" ] && labels=$labels/fold$k
    serkit recipe check-labels --labels "$labels" --fold "$fold" --option=--tapt-labels || exit 1
    labels=$(realpath "$labels")
    cpt_batch
    opts="upstream=$upstream labels=$labels updates=$cpt_updates config=$cpt_config update_freq=$cpt_update_freq"
    is_done "$exp/tapt/fold$k" "$opts" "$upstream" "$labels" "$splits" "$cpt_config" || {
      log "Stage 1: TAPT fold $k: $cpt_batch"
      tb "$exp/tapt/fold$k"
      timed "tapt_fold$k" bash "$_ser_local/cpt.sh" --yaml "$cpt_config" --fold "$fold" --labels "$labels" \
        --init "$upstream" --updates "$cpt_updates" --update-freq "$cpt_update_freq" --out "$exp/tapt/fold$k" "${tb[@]}"
      mark_done "$exp/tapt/fold$k"; }
    start=$(realpath "$exp/tapt/fold$k/checkpoint_last.pt")
  fi
  opts="upstream=$start epochs=$teacher_epochs lr=$finetune_lr pooling=$teacher_pooling"
  is_done "$out" "$opts" "$start" "$splits" "$flea_conf" || {
    train_flea "teacher_fold$k" "$fold" "$out" "$start" "$teacher_pooling" "$teacher_epochs"
    logged "$out/log/export.log" serkit export-upstream --exp "$out" --out "$out/upstream.pt"
    mark_done "$out"; }
  opts="layer=$layer"
  is_done "$out/layer$layer" "$opts" "$out" || {
    timed "dump_fold$k" logged "$out/log/dump.log" serkit dump-features --upstream "$out/upstream.pt" --layers "$layer" \
      --data "$fold/train.tsv" "$fold/valid.tsv" "$fold/test.tsv" --out "$out/layer$layer" --device "$device"
    mark_done "$out/layer$layer"; }
}

step_kmeans() {  # stage 2, fold K
  local k=$1 fold=$splits/fold$1 feats=$exp/teacher/fold$1/layer$layer out=$exp/km/fold$1 fit_splits=train opts
  local -a trans=()
  if $transductive; then fit_splits=train,valid,test; trans=(--transductive); fi
  log "Stage 2: k-means fold $k: $feats, fitted on the frames of split(s) $fit_splits$($transductive && echo ' (transductive: held-out audio included)') -> $out"
  opts="layer=$layer k=$nclusters transductive=$transductive fit_splits=$fit_splits"
  is_done "$out" "$opts" "$feats" "$splits" || {
    timed "kmeans_fold$k" serkit kmeans fit --feats "$feats" --fold "$fold" --split "$fit_splits" --layer "$layer" \
      --n-clusters "$nclusters" --out "$out/km.model" "${trans[@]}"
    serkit kmeans apply --model "$out/km.model" --feats "$feats" --fold "$fold" --splits train,valid,test --out "$out"
    mark_done "$out"; }
  log "Stage 2: fold $k: k-means frames per split: $(json_value "$out/km.json" fit_frames_per_split)"
}

step_cpt() {  # stage 3, fold K
  local k=$1 fold=$splits/fold$1 out=$exp/cpt/fold$1 opts
  cpt_batch
  log "Stage 3: continued pretraining fold $k: $(basename "$upstream") + $exp/km/fold$k -> $out; batch: $cpt_batch"
  opts="upstream=$upstream k=$nclusters updates=$cpt_updates config=$cpt_config update_freq=$cpt_update_freq"
  is_done "$out" "$opts" "$upstream" "$exp/km/fold$k" "$splits" "$cpt_config" || {
    tb "$out"
    timed "cpt_fold$k" bash "$_ser_local/cpt.sh" --yaml "$cpt_config" --fold "$fold" --labels "$exp/km/fold$k" \
      --init "$upstream" --updates "$cpt_updates" --update-freq "$cpt_update_freq" --out "$out" "${tb[@]}"
    mark_done "$out"; }
}

step_flea() {  # stage 4: FLEA finetune with POOLING, fold K
  local p=$1 k=$2 fold=$splits/fold$2 out=$exp/flea_$1/fold$2 cpt opts
  cpt=$(realpath "$exp/cpt/fold$k/checkpoint_last.pt")
  log "Stage 4: FLEA finetune fold $k ($p pooling): $cpt -> $out"
  opts="cpt=$cpt pooling=$p epochs=$finetune_epochs lr=$finetune_lr"
  is_done "$out" "$opts" "$exp/cpt/fold$k" "$splits" "$flea_conf" || {
    train_flea "flea_${p}_fold$k" "$fold" "$out" "$cpt" "$p" "$finetune_epochs"
    mark_done "$out"; }
}

step_head() {  # stage 4: METHOD (a head, or the corpus's name of one) on fold K
  local name=$1 h=${head_of[$1]:-$1} k=$2 fold=$splits/fold$2 run out feats="" overrides extra=""
  local -a bas_opts=()
  run=$(head_run "$name"); out=$run/fold$k
  [ "$setting" != featex ] || feats=$(feats_dir "$upstream" "$layers")
  log "Stage 4: $name ($setting) fold $k: $fold -> $out"
  # the part of --head-overrides this head's configs take; BAS and its baselines: --bas-layers layers
  overrides=${head_overrides_of[$name]:-}
  case $h in linear|ffn|cnn|shiftcnn|transformer|shiftformer|lstm|shiftlstm)
    overrides="${input_overrides:+$input_overrides }$overrides"
    # SpecAugment's channel masks: ShiftSER's 64 of 768 channels, scaled to the features' width
    if [ -n "$feats" ] && [[ "$overrides" != *--channel_mask_width* ]] && [ "$(json_value "$feats/meta.json" dim)" != 768 ]; then
      extra+=" --channel_mask_width $(serkit recipe channel-mask-width "$feats")"
    fi ;;
  esac
  case "$h" in
    bas) bas_opts=(--search-overrides "--search_layers $bas_layers $search_overrides")
      [ -z "$search_epochs" ] || bas_opts+=(--search-epochs "$search_epochs") ;;
    bas_msa_ffn) overrides="--arch msa_ffn$(for ((i = 1; i < bas_layers; i++)); do printf ,msa_ffn; done) $overrides" ;;
    bas_transformer) overrides="--transformer_layers $bas_layers $overrides" ;;
  esac
  # the options every head takes (given only when set, so a run without them keeps its identity)
  [ -z "$best_metric" ] || extra+=" --best_metric $best_metric"
  [ -z "$batch_size" ] || extra+=" --batch_size $batch_size"
  case "$h" in bas|bas_msa_ffn) [ -z "$model_dim" ] || extra+=" --model_dim $model_dim" ;; esac
  [ "$h" != bas ] || [ "$ffn_residual" != true ] || extra+=" --ffn_residual True"
  overrides="$overrides$extra"
  local opts="upstream=$upstream setting=$setting epochs=$head_epochs overrides=$overrides${bas_opts[*]:+ ${bas_opts[*]}}"
  [ "$layers" = all ] || opts+=" layers=$layers"
  is_done "$out" "$opts" "$upstream" "$feats" "$splits" "$(head_conf "$h")" "$(head_search_conf "$h")" || {
    tb "$out"
    if [ "$setting" = featex ]; then
      timed "${h}_fold$k" logged "$out/log/train.log" bash "$_ser_local/train_head.sh" --method "$h" --fold "$fold" --out "$out" \
        --feats "$feats" --epochs "$head_epochs" --device "$device" --overrides "$overrides" "${bas_opts[@]}" "${tb[@]}"
    else
      timed "${h}_fold$k" logged "$out/log/train.log" bash "$_ser_local/train_head.sh" --method "$h" --fold "$fold" --out "$out" \
        --upstream "$upstream" --epochs "$head_epochs" --device "$device" --overrides "$overrides" "${bas_opts[@]}" "${tb[@]}"
    fi
    mark_done "$out"; }
}

# MFSN (stage 4): TEC and SEC features dumped once (step_dump_feats), then per fold two `serkit train`
# calls: the search (writes arch.txt) and the retraining of the derived cell (--arch).
# --mfsn-tec text|asr: serkit's text ablation (not the paper's), TEC from transcripts (conf/mfsn_text*.yaml).
mfsn_sources() {  # sets tec, sec, label, tec_args, tec_inputs
  local sec_label tec_label
  tec=${tec_upstream:-}; sec=${sec_upstream:-}
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
  case $mfsn_tec in
    audio)
      label="TEC $tec_label (detached) + SEC $sec_label"
      if $mini; then  # the demo's label, unchanged
        label="tiny HuBERT pretrained on a separate mini corpus (NOT wav2vec 2.0/data2vec): TEC L$tec_layer, SEC L$sec_layers"
      fi
      tec_args=(--tec_feats "$(feats_dir "$tec")"); tec_inputs=("$(feats_dir "$tec")") ;;
    text)
      [ -s "$data/text" ] || die "$data/text: no transcripts; re-run stage 0 (serkit prepare writes them from the corpus's transcriptions)"
      label="TEC $corpus's transcripts + SEC $sec_label"
      tec_args=(--text "$(realpath "$data/text")"); tec_inputs=("$data/text") ;;
    asr)
      [ -n "$ctc_dict" ] && [ -f "$ctc_dict" ] || die "--mfsn-tec asr needs --ctc-dict FILE (the dict.ltr.txt of $tec)"
      label="TEC greedy CTC transcripts of $tec_label + SEC $sec_label"
      tec_args=(--tec_feats "$(feats_dir "$tec")" --ctc_checkpoint "$tec" --ctc_dict "$(realpath "$ctc_dict")")
      tec_inputs=("$(feats_dir "$tec")" "$tec" "$ctc_dict") ;;
  esac
}

step_mfsn() {  # stage 4: MFSN's ABLATION on fold K
  local mfsn_ablation=$1 k=$2 fold=$splits/fold$2 run out search arch="" opts sec_feats tec sec label
  local -a train ablation_args tec_args tec_inputs overlay_args=() extra=()
  local o; for o in "${mfsn_overlays[@]}"; do overlay_args+=(--overlay "$o"); done
  [ -z "$search_epochs" ] || extra+=(--search_epochs "$search_epochs")
  [ -z "$mfsn_epochs" ] || extra+=(--train_epochs "$mfsn_epochs")
  [ -z "$batch_size" ] || extra+=(--batch_size "$batch_size")
  [ -z "$mfsn_overrides" ] || read -r -a o <<< "$mfsn_overrides"
  [ -z "$mfsn_overrides" ] || extra+=("${o[@]}")
  mfsn_sources
  sec_feats=$(feats_dir "$sec")
  run=$(mfsn_run "$mfsn_tec" "$mfsn_ablation"); out=$run/fold$k; search=${run}_search/fold$k
  case $mfsn_ablation in
    mfsn_single) ablation_args=(--ablation mfsn --streams single) ;;
    *) ablation_args=(--ablation "$mfsn_ablation") ;;
  esac
  # The label is a YAML string: quoted, since it holds ': '.
  train=(serkit train "$mfsn_config" "${overlay_args[@]}" --fold-dir "$fold" --feats "$sec_feats" "${tec_args[@]}"
         "${ablation_args[@]}" --device "$device" --tec_layer "$tec_layer" --sec_layers "[$sec_layers]"
         --sources_label "\"$label\"" --noprogressbar "${extra[@]}")
  opts="tec=$mfsn_tec:${tec:-none}:$tec_layer sec=$sec:$sec_layers config=$mfsn_config${mfsn_overlays[*]:+ overlays=${mfsn_overlays[*]}} ablation=$mfsn_ablation"  # epochs: the config's
  [ ${#extra[@]} -eq 0 ] || opts+=" ${extra[*]}"
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
}

# describe METHOD [POOLING]: the run's run.json, once its folds are trained (labels that depend on
# every fold, e.g. the k-means frame counts, are read then).
step_describe() {
  local m=$1 p=${2:-} teacher what tec sec label
  local -a tec_args tec_inputs
  case $m in
    teacher)
      teacher="teacher (HuBERT finetuned, $teacher_pooling pooling)"
      [ -z "$tapt_labels" ] || teacher="teacher (HuBERT TAPT on $tapt_labels, then finetuned, $teacher_pooling pooling)"
      if [ -n "$tapt_km" ]; then
        cpt_batch
        teacher="teacher (HuBERT TAPT on $(basename "$tapt_km") labels of layer $tapt_layer, batch $cpt_batch, then finetuned, $teacher_pooling pooling)"
      fi
      run_json "$exp/teacher" method="$teacher" setting=finetune \
        protocol="$protocol" upstream="$(upstream_label)" config="$flea_conf" selection=valid_test_mean ;;
    flea)
      cpt_batch
      # shellcheck disable=SC2046
      run_json "$exp/flea_$p" method="FLEA ($p pooling)" setting=finetune protocol="$protocol" \
        upstream="CPT-$(upstream_label), CPT batch $cpt_batch, layer $layer, k=$nclusters, $(serkit recipe km-label \
          --transductive "$transductive" $(for k in $fold_list; do echo "$exp/km/fold$k/km.json"; done))" \
        config="$flea_conf" selection=valid_test_mean ;;
    mfsn)
      local mfsn_ablation=$p
      mfsn_sources
      what="MFSN ($mfsn_ablation)"
      case $mfsn_tec in
        text) what="MFSN ($mfsn_ablation, TEC from the transcripts; text leaks across sessions)" ;;
        asr) what="MFSN ($mfsn_ablation, TEC from greedy CTC transcripts; text leaks across sessions)" ;;
      esac
      run_json "$(mfsn_run "$mfsn_tec" "$mfsn_ablation")" method="$what" setting=featex protocol="$protocol" upstream="$label" \
        config="$mfsn_config${mfsn_overlays[*]:+ + ${mfsn_overlays[*]}}" selection=valid ;;
    *)
      local h_label=$m h=${head_of[$m]:-$m}
      case $h in linear|ffn|cnn|shiftcnn|transformer|shiftformer|lstm|shiftlstm)
        [ -z "$input_overrides" ] || h_label="$m ($shiftser_input input: $input_overrides)" ;; esac
      [ "$h" = "$m" ] || h_label="$m ($h)"
      run_json "$(head_run "$m")" method="$h_label" setting="$setting" protocol="$protocol" upstream="$(upstream_label)" \
        config="$(head_conf "$h")" selection="$(case $h in bas*|mfsn) echo valid ;; *) echo best_test ;; esac)" ;;
  esac
}

step_score() {  # stage 5
  local r t
  local -a runs=() beside=() scored
  $flea && runs+=("$exp/teacher") && for p in $poolings; do runs+=("$exp/flea_$p"); done
  for h in "${heads[@]}"; do
    [ "$h" = mfsn ] || { runs+=("$(head_run "$h")"); continue; }
    for a in ${mfsn_ablation//,/ }; do
      runs+=("$(mfsn_run "$mfsn_tec" "$a")")
      # MFSN runs with the other TEC sources, scored earlier, go beside it: the text-vs-audio gap in one table
      for t in audio text asr; do
        [ "$t" != "$mfsn_tec" ] && [ -f "$(mfsn_run $t "$a")/results.json" ] && beside+=("$(mfsn_run $t "$a")")
      done
    done
  done
  log "Stage 5: scoring (${selection} selection): ${runs[*]}"
  for r in "${runs[@]}"; do
    timed "score_$(basename "$r")" serkit score "$r" --selection "$selection" ${headline_json:+--headline "$headline"} > /dev/null
  done
  log "Results of this run${beside[*]:+ (and, for comparison, ${beside[*]##*/})}:"
  serkit results "${runs[@]}" "${beside[@]}"
  # The experiment's table lists every run scored under it so far, this invocation's and earlier ones.
  mapfile -t scored < <(find "$exp" -mindepth 2 -maxdepth 2 -name results.json -printf '%h\n' | sort)
  serkit results "${scored[@]}" --out "$exp/RESULTS.md" > /dev/null
  log "All runs of $exp: $exp/RESULTS.md; per-run details: <run>/RESULTS.md, confusion.png"
  if [ -f "$timing_file" ]; then
    log "Where the time went in this run (seconds per step, summed over folds):"
    sed -E 's/_(fold|shard)[0-9]+\t/\t/' "$timing_file" \
      | awk -F'\t' '{t[$1]+=$2; s+=$2} END {for (k in t) printf "%8d  %s\n", t[k], k; printf "%8d  total\n", s}' \
      | sort -k1,1nr >&2
  fi
}

############################################################################### a job: one step
if [ -n "$job" ]; then
  read -r -a _ser_step <<< "$job"
  if [ "$stop_stage" -ge 1 ] && [ "${_ser_step[0]}" != data ]; then
    ! $mini || [ -n "$upstream" ] || upstream=$workdir/exp/upstream/tiny_hubert.pt
    fold_list=$(split_folds "$splits" "$folds") || exit 1
  fi
  case "${_ser_step[0]}" in
    data|dump_feats|tapt_dump|teacher|kmeans|cpt|flea|head|mfsn|describe|score) "step_${_ser_step[0]}" "${_ser_step[@]:1}" ;;
    *) die "--job $job: no such step" ;;
  esac
  exit 0
fi

############################################################################### the driver
_ser_jobs=()  # every job submitted, for the final wait
# submit STAGE FOLDS DEPS STEP [ARGS...]: the step as a job of the backend; prints its id. FOLDS narrows
# --folds (empty: the run's). The job gets the options this run resolved (device, layer, CPT batches),
# except that a Slurm job, which runs on another node, resolves --device auto and --cpt-update-freq
# auto from that node's GPUs.
submit() {
  local st=$1 k=$2 deps=$3 name dev=$device freq=$cpt_update_freq; shift 3
  name=$(IFS=_; echo "$*")
  [ -z "$k" ] || name=${name/%_$k/_fold$k}
  [ "${backend:-local}" != slurm ] || { dev=$device_asked; freq=${cpt_update_freq_asked:-$cpt_update_freq}; }
  backend_submit "$name" "$exp/log/jobs/$name.log" "$deps" -- \
    bash "$_ser_script" "${_ser_args[@]}" --device "$dev" --layer "$layer" --nclusters "$nclusters" \
      --cpt-update-freq "$freq" --stage "$st" --stop-stage "$st" ${k:+--folds "$k"} --job "$*"
}
declare -A _ser_id=()
# run_job KEY STAGE FOLDS DEPS STEP...: submit, remember the id under KEY.
run_job() {
  local key=$1 id; shift
  id=$(submit "$@") || exit 1
  _ser_id[$key]=$id; _ser_jobs+=("$id")
}
# dump_job ROLE DEPS: the feature dump of ROLE's checkpoint (sharded with --nshard > 1), once per
# checkpoint; its id in _ser_id[dump:CKPT].
dump_job() {
  local role=$1 deps=$2 ckpt i shards=""
  ckpt=$(ckpt_of "$role")
  if [ -n "${_ser_id[dump:$ckpt]:-}" ]; then _ser_id[dump:$role]=${_ser_id[dump:$ckpt]}; return 0; fi
  local l=all; [ "$role" != upstream ] || l=$layers
  if [ "$nshard" -gt 1 ] && ! is_done "$(feats_dir "$ckpt" "$l")" "$(dump_opts "$ckpt" "$l")" "$ckpt" "$data"; then
    for ((i = 0; i < nshard; i++)); do
      run_job "shard$i:$ckpt" 4 "" "$deps" dump_feats "$role" "$i"; shards+=" ${_ser_id[shard$i:$ckpt]}"
    done
    deps="$deps$shards"
  fi
  run_job "dump:$ckpt" 4 "" "$deps" dump_feats "$role"
  _ser_id[dump:$role]=${_ser_id[dump:$ckpt]}
}

data_job=""
if stage_selected 0; then run_job data 0 "" "" data; data_job=${_ser_id[data]}; backend_wait "$data_job"; fi
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
cpt_update_freq_asked=$cpt_update_freq  # --backend slurm: auto is resolved by the CPT job's GPUs
$flea && cpt_batch

if $flea && stage_selected 1; then
  tapt_job=""
  if [ -n "$tapt_km" ]; then run_job tapt_dump 1 "" "$data_job" tapt_dump; tapt_job=${_ser_id[tapt_dump]}; fi
  for k in $fold_list; do run_job "1:$k" 1 "$k" "$data_job $tapt_job" teacher "$k"; done
  run_job describe:teacher 1 "" "${_ser_jobs[*]}" describe teacher
fi
if $flea && stage_selected 2; then
  for k in $fold_list; do run_job "2:$k" 2 "$k" "${_ser_id[1:$k]:-$data_job}" kmeans "$k"; done
fi
if $flea && stage_selected 3; then
  for k in $fold_list; do run_job "3:$k" 3 "$k" "${_ser_id[2:$k]:-$data_job}" cpt "$k"; done
fi
if stage_selected 4; then
  if $flea; then
    for p in $poolings; do
      fold_jobs=""
      for k in $fold_list; do
        run_job "4:flea_$p:$k" 4 "$k" "${_ser_id[3:$k]:-$data_job}" flea "$p" "$k"; fold_jobs+=" ${_ser_id[4:flea_$p:$k]}"
      done
      run_job "describe:flea_$p" 4 "" "$fold_jobs" describe flea "$p"
    done
  fi
  for h in "${heads[@]}"; do
    deps=$data_job
    if [ "$h" = mfsn ]; then
      roles=sec; [ "$mfsn_tec" = text ] || roles="sec tec"
      for role in $roles; do dump_job "$role" "$data_job"; deps+=" ${_ser_id[dump:$role]}"; done
      mfsn_sources
      log "Stage 4: MFSN (${mfsn_ablation//,/, }, TEC: $mfsn_tec): knowledge sources $label"
    elif [ "$setting" = featex ]; then
      log "Stage 4: $h needs cached features of $(basename "$upstream")$([ "$layers" = all ] || echo " (layers $layers)")"
      dump_job upstream "$data_job"; deps+=" ${_ser_id[dump:upstream]}"
    fi
    if [ "$h" = mfsn ]; then
      for a in ${mfsn_ablation//,/ }; do
        fold_jobs=""
        for k in $fold_list; do run_job "4:mfsn_$a:$k" 4 "$k" "$deps" mfsn "$a" "$k"; fold_jobs+=" ${_ser_id[4:mfsn_$a:$k]}"; done
        run_job "describe:mfsn_$a" 4 "" "$fold_jobs" describe mfsn "$a"
      done
      continue
    fi
    fold_jobs=""
    for k in $fold_list; do run_job "4:$h:$k" 4 "$k" "$deps" head "$h" "$k"; fold_jobs+=" ${_ser_id[4:$h:$k]}"; done
    run_job "describe:$h" 4 "" "$fold_jobs" describe "$h"
  done
fi
if stage_selected 5; then run_job score 5 "" "${_ser_jobs[*]}" score; fi
backend_wait "${_ser_jobs[@]}"
# a local job printed its output here; a scheduler's went to its log (exp/<tag>/log/jobs/score.log)
if [ "$backend" != local ] && stage_selected 5; then cat "$exp/RESULTS.md"; fi
