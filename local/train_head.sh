#!/usr/bin/env bash
# Trains one head on one fold: `serkit train shiftser.yaml --method <head>` (the ShiftSER heads),
# `bas.yaml` (bas_ffn: --method ffn, bas_transformer: --method transformer, bas_msa_ffn: --arch
# msa_ffn,...), or for BAS the search (bas_search.yaml, in <out>/search) followed by the retrain of the
# derived architecture. These configs are shared by the corpora: plugins/serkit/conf.
#
#   bash ../../local/train_head.sh --method shiftcnn --fold FOLD --out EXP/shiftcnn_featex/fold1 \
#       --feats DUMP_DIR --epochs 100 [--upstream CKPT] [--device cpu]
set -euo pipefail
# Runs in the caller's directory (the recipe's).
_here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=path.sh
. "$_here/path.sh"
# shellcheck source=stage.sh
. "$_here/stage.sh"

method=""; fold=""; out=""; feats=""; upstream=""; epochs=""; device=cpu; search_epochs=""
overrides=""   # extra yaml overrides, e.g. "--channel_mask_width 5"
search_overrides=""   # BAS: extra yaml overrides for the search only, e.g. "--search_layers 3"
tensorboard=""   # TensorBoard events to DIR (BAS: the search's to DIR/search); needs serkit[tensorboard]
help_message="Usage: $0 --method NAME --fold DIR --out DIR (--feats DIR | --upstream CKPT) [--epochs N] [--search-epochs N] [--device D] [--overrides \"--key value ...\"] [--search-overrides \"--key value ...\"] [--tensorboard DIR]"
# shellcheck source=parse_options.sh
. "$_here/parse_options.sh"
shared_conf=$_here/../plugins/serkit/conf
[ -n "$method" ] && [ -n "$fold" ] && [ -n "$out" ] || die "$help_message"

src=()
[ -n "$feats" ] && src+=(--feats "$feats")
[ -n "$upstream" ] && src+=(--upstream "$upstream")
[ ${#src[@]} -gt 0 ] || die "give --feats or --upstream"
ep=(); [ -n "$epochs" ] && ep=(--number_of_epochs "$epochs")
read -r -a extra <<< "$overrides"
read -r -a search_extra <<< "$search_overrides"
[ ${#search_extra[@]} -eq 0 ] || [ "$method" = bas ] || die "--search-overrides is for --method bas (the BAS search)"
tb() { tb=(); [ -z "$tensorboard" ] || tb=(--tensorboard "$tensorboard$1"); }

case "$method" in
  bas)
    sep=(); [ -n "${search_epochs:-$epochs}" ] && sep=(--number_of_epochs "${search_epochs:-$epochs}")
    log "BAS search: $fold -> $out/search"
    tb /search
    serkit train "$shared_conf/bas_search.yaml" --fold-dir "$fold" --output-folder "$out/search" "${src[@]}" \
      "${sep[@]}" "${extra[@]}" "${search_extra[@]}" --device "$device" --noprogressbar "${tb[@]}"
    arch=$(cat "$out/search/arch.txt")
    log "BAS retrain of the derived architecture '$arch': $fold -> $out"
    tb ""
    serkit train "$shared_conf/bas.yaml" --fold-dir "$fold" --output-folder "$out" "${src[@]}" --arch "$arch" \
      "${ep[@]}" "${extra[@]}" --device "$device" --noprogressbar "${tb[@]}"
    ;;
  mfsn)
    die "MFSN needs two knowledge sources: use --method mfsn through run.sh (stage 4 mfsn branch)"
    ;;
  bas_ffn|bas_transformer|bas_msa_ffn)  # the BAS paper's baselines, trained with BAS's settings
    case "$method" in
      bas_ffn) head=(--method ffn) ;;
      bas_transformer) head=(--method transformer)  # the paper's 4L/3L baseline: --transformer_layers N
        [[ " ${extra[*]} " == *" --transformer_layers "* ]] || die "--method bas_transformer: give --overrides \"--transformer_layers 4\"" ;;
      bas_msa_ffn) head=()  # BAS's own blocks: --arch msa_ffn,... comes with --overrides
        [[ " ${extra[*]} " == *" --arch "* ]] || die "--method bas_msa_ffn: give --overrides \"--arch msa_ffn,msa_ffn,...\"" ;;
    esac
    tb ""
    serkit train "$shared_conf/bas.yaml" "${head[@]}" --fold-dir "$fold" --output-folder "$out" "${src[@]}" \
      "${ep[@]}" "${extra[@]}" --device "$device" --noprogressbar "${tb[@]}"
    ;;
  linear|ffn|cnn|shiftcnn|transformer|shiftformer|lstm|shiftlstm)
    tb ""
    serkit train "$shared_conf/shiftser.yaml" --method "$method" --fold-dir "$fold" --output-folder "$out" \
      "${src[@]}" "${ep[@]}" "${extra[@]}" --device "$device" --noprogressbar "${tb[@]}"
    ;;
  *)
    die "--method $method: unknown"
    ;;
esac
