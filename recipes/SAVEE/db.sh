#!/usr/bin/env bash
# Where the corpus lives. Leave empty to run on the mini corpus (built on the fly, CPU only).
# Example: SAVEE=/data/corpora/SAVEE   (the folder holding AudioData/, or the flat DC_a01.wav files)
SAVEE="${SAVEE:-}"
