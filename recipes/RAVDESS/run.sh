#!/usr/bin/env bash
# RAVDESS recipe (the audio-only speech release, 24 actors, 8 emotions): every method of the recipe
# template (../../local/ser.sh) on speaker-independent folds of 4 actors. `bash run.sh --help` lists
# the options; with no corpus in db.sh and no --root it runs on the mini RAVDESS.
cd "$(dirname "$0")" || exit 1
corpus=RAVDESS prepare_name=ravdess mini_release=RAVDESS  # db.sh variable, serkit prepare name, mini release folder
corpus_protocols=ravdess_actors4     # test = 4 consecutive actors (2 male, 2 female): 6 folds
default_method=shiftcnn,bas_ffn      # --method on the real corpus
mini_method=shiftcnn
protocol=ravdess_actors4
# the mini corpus has 2 takes per actor and emotion: a quarter of the training actors' takes validate
mini_defaults() { valid_fraction=${valid_fraction:-0.25}; }

. ../../local/ser.sh
