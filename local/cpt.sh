#!/usr/bin/env bash
# HuBERT continued pretraining (FLEA's CPT, or TAPT) on k-means labels with fairseq-hydra-train, the
# fairseq `hubert_pretraining` task and `hubert` criterion, and serkit's `serkit_hubert` model, which
# starts from --init and re-initialises only the label-dependent parts for the new label set.
#
#   bash ../../local/cpt.sh --yaml ../../plugins/serkit/conf/fairseq/cpt_hubert_base.yaml \
#       --fold FOLD --labels KM_DIR \
#       --init hubert_base_ls960.pt --updates 20000 --out EXP/cpt/fold1
# Writes OUT/checkpoint_last.pt (a fairseq checkpoint any serkit tool loads) and OUT/train.log.
set -euo pipefail
# Runs in the recipe's directory (the caller's: a relative --yaml is read from there).
_here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=path.sh
. "$_here/path.sh"
# shellcheck source=stage.sh
. "$_here/stage.sh"

yaml=""; fold=""; labels=""; init=""; updates=""; out=""
update_freq=1  # batches of dataset.max_tokens (per GPU) accumulated per update
tensorboard=""  # fairseq's TensorBoard events (common.tensorboard_logdir) to DIR; needs serkit[tensorboard]
help_message="Usage: $0 --yaml FILE --fold DIR --labels DIR --init CKPT --updates N [--update-freq N] --out DIR [--tensorboard DIR]"
# shellcheck source=parse_options.sh
. "$_here/parse_options.sh"
for v in yaml fold labels init updates out; do [ -n "${!v}" ] || die "--$v is required ($help_message)"; done
check_int --updates "$updates" 1; check_int --update-freq "$update_freq" 1
for f in "$labels/train.km" "$labels/valid.km" "$labels/dict.km.txt" "$fold/train.tsv" "$init"; do
  [ -f "$f" ] || die "$f: missing (run the earlier stages first)"
done

log "CPT: $(basename "$init") + labels $labels on $fold, $updates updates of update_freq $update_freq ($yaml) -> $out"
mkdir -p "$out"
# fairseq resumes from OUT/checkpoint_last.pt when it exists, so a killed run continues.
user_dir=$(serkit_user_dir) || exit 1
tb=(); [ -z "$tensorboard" ] || tb=(common.tensorboard_logdir="$(hydra_value "$(realpath -m "$tensorboard")")")
# Paths become quoted Hydra values, so spaces, commas, '=', brackets or quotes in them are data.
fairseq-hydra-train --config-dir "$(realpath "$(dirname "$yaml")")" \
  --config-name "$(basename "${yaml%.yaml}")" \
  common.user_dir="$(hydra_value "$user_dir")" \
  task.data="$(hydra_value "$(realpath "$fold")")" task.label_dir="$(hydra_value "$(realpath "$labels")")" \
  model.init_from="$(hydra_value "$(realpath "$init")")" optimization.max_update="$updates" \
  "optimization.update_freq=[$update_freq]" \
  checkpoint.save_dir="$(hydra_value "$(realpath "$out")")" hydra.run.dir="$(hydra_value "$(realpath "$out")")" \
  "${tb[@]}" >> "$out/train.log" 2>&1 || { tail -30 "$out/train.log" >&2; die "CPT failed (log: $out/train.log)"; }
[ -f "$out/checkpoint_last.pt" ] || die "CPT wrote no $out/checkpoint_last.pt (log: $out/train.log)"
# the last validation summary: "epoch 001 | valid on 'valid' subset | loss 4.711 | ... | num_updates 4"
grep -E "valid on '[^']+' subset \|" "$out/train.log" | tail -1 >&2 || true
