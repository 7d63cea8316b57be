#!/usr/bin/env bash
# Where the corpus lives. Leave empty to run on the mini corpus (built on the fly, CPU only).
# Example: RAVDESS=/data/corpora/RAVDESS   (the folder holding Actor_01 .. Actor_24 of Audio_Speech_Actors_01-24.zip)
RAVDESS="${RAVDESS:-}"
