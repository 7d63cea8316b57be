#!/usr/bin/env bash
# SAVEE recipe: MFSN and its ablations (SEC only, SEC+TEC without search, full MFSN) on the
# leave-one-speaker-out (4 folds) and the paper's 10-fold cross-validation protocols.
# Stages, options and jobs: the template's (../../local/ser.sh, --help).
cd "$(dirname "$0")" || exit 1
corpus=SAVEE prepare_name=savee mini_release=SAVEE  # db.sh variable, serkit prepare name, mini release folder
corpus_protocols="savee_loso4 savee_cv10"
protocol=both                        # savee_loso4 | savee_cv10 | both (each in turn)
default_method=mfsn; mini_method=mfsn
mfsn_ablation=sec_only,sec_tec_nosearch,mfsn
mfsn_overrides="--cache_in_memory True"   # SAVEE is small (480 clips)
config=""                            # MFSN trainer yaml (= --mfsn-config) [the shared mfsn.yaml; mini: + the mfsn_mini overlay]
folds=""                             # [all; mini corpus: 1]
corpus_help="  --config FILE         trainer HyperPyYAML of MFSN (= --mfsn-config) [the shared mfsn.yaml; mini: + mfsn_mini]"
# the mini SAVEE (32 clips a speaker): a quarter validates, so that every class has a validation clip
mini_defaults() { folds=${folds:-1}; valid_fraction=${valid_fraction:-0.25}; }

. ../../local/ser.sh
