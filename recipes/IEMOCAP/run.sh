#!/usr/bin/env bash
# IEMOCAP recipe: FLEA end to end (pseudo-emotion labels -> HuBERT continued pretraining ->
# finetuning) and the ShiftSER / BAS / MFSN heads, on leak-free folds, scored the same way.
# The stages, options and jobs are the template's (../../local/ser.sh); `bash run.sh --help` lists them.
cd "$(dirname "$0")" || exit 1
corpus=IEMOCAP prepare_name=iemocap mini_release=IEMOCAP_full_release  # db.sh variable, serkit prepare name, mini release folder
corpus_protocols="iemocap_loso5 iemocap_loso10"
default_method=flea                  # --method on the real corpus (mini corpus: flea,shiftcnn, `make demo`)
mini_method=flea,shiftcnn
# Defaults the README's fidelity tables name (`run.sh --option`):
protocol=iemocap_loso5        # iemocap_loso5 | iemocap_loso10
valid=stratified              # iemocap_loso5 validation: stratified (10 % of training sessions) | speaker
selection=valid               # valid | paper (ShiftSER: best test epoch; FLEA: (valid+test)/2), named in RESULTS
layer=9                       # FLEA: teacher layer clustered (the paper's best: 9)
nclusters=50                  # FLEA: k-means clusters (the paper's best: 50)
pooling=both                  # FLEA finetune pooling: attention | mean | both
transductive=false            # true: k-means also sees the held-out audio (the official code)
tapt_km=""                    # FLEA TAPT: a published k-means model (off)
tapt_layer=9                  # FLEA TAPT: the layer --tapt-km was fitted on
teacher_pooling=mean          # FLEA teacher pooling (our reading of Table 1)
cpt_update_freq=auto          # ceil(4 / GPUs): the official code's 4 GPUs x 87.5 s per update
cpt_config=""                 # the shared fairseq/cpt_hubert_base.yaml (mini corpus: cpt_hubert_tiny.yaml)
bas_layers=4                  # BAS: searchable layers, 3 or 4
shiftser_input=masked         # masked | paper (clipped to 7.5 s) | official (7.5 s, zero-padded)

. ../../local/ser.sh
