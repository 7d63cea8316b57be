#!/usr/bin/env bash
# IEMOCAP recipe: FLEA end to end (pseudo-emotion labels -> HuBERT continued pretraining ->
# finetuning) and the ShiftSER / BAS / MFSN heads, on leak-free folds, scored the same way.
# The stages, options and jobs are the template's (../../local/ser.sh); `bash run.sh --help` lists them.
set -euo pipefail
cd "$(dirname "$0")"
. ./path.sh
. ./db.sh

corpus=IEMOCAP                       # db.sh's variable, the name in run.json
prepare_name=iemocap                 # serkit prepare / mini-corpus
mini_release=IEMOCAP_full_release
corpus_protocols="iemocap_loso5 iemocap_loso10"
default_method=flea                  # --method on the real corpus (mini corpus: flea,shiftcnn, `make demo`)
mini_method=flea,shiftcnn
# Defaults the README's fidelity tables name (`run.sh --option`):
protocol=iemocap_loso5
valid=stratified
selection=valid
layer=9
nclusters=50
pooling=both
transductive=false
tapt_km=""
tapt_layer=9
teacher_pooling=mean
cpt_update_freq=auto
cpt_config=""
bas_layers=4
shiftser_input=masked

. ../../local/ser.sh
