#!/usr/bin/env bash
# Where the corpus lives. Leave empty to run on the mini corpus (built on the fly, CPU only).
# Example: IEMOCAP=/data/corpora/IEMOCAP_full_release
IEMOCAP="${IEMOCAP:-}"
