#!/usr/bin/env bash
# MELD recipe: BAS (block architecture search, Interspeech 2023) on frozen self-supervised features,
# against the paper's baselines (simple-FFN; a transformer of --bas-layers layers, as the BAS block
# stack of msa_ffn blocks and as serkit's transformer head), on the official split (one fold),
# weighted F1 as the headline. Stages, options and jobs: the template's (../../local/ser.sh, --help).
cd "$(dirname "$0")" || exit 1
corpus=MELD prepare_name=meld mini_release=MELD.Raw  # db.sh variable, serkit prepare name, mini release folder
corpus_protocols=meld_official       # train/dev/test: one fold
headline=wf1                         # 48 % of the test set is neutral
# MELD's names of the BAS paper's baselines (trained with BAS's settings)
method_aliases="ffn=bas_ffn msa_ffn=bas_msa_ffn transformer=bas_transformer"
method=bas,ffn,msa_ffn,transformer   # bas = search + retrain; see --help for every method
default_method=$method; mini_method=$method
layers=all                           # upstream layers dumped and mixed by the learned weighted sum
bas_layers=4                         # searchable layers: 3 or 4 (the paper's 3L-/4L-BAS)
selection=valid                      # valid | best_test | valid_test_mean (always named in the table)
best_metric=weighted_f1              # validation metric of each run's kept checkpoint (MELD's headline)
nj=2                                 # parallel clip decoders (stage 0)
corpus_help="  --nj N              parallel clip decoders of serkit prepare meld (stage 0) [$nj]"
prepare_options() { printf '%s\n' --jobs "$nj"; }
# the mini MELD (69 training clips): ours, so that 9 steps an epoch still train the tiny HuBERT's width
mini_defaults() {
  tag=${tag:-mini}; search_epochs=${search_epochs:-20}; head_epochs=${head_epochs:-15}
  batch_size=${batch_size:-8}; model_dim=${model_dim:-64}
}

. ../../local/ser.sh
