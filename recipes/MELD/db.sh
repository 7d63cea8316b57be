#!/usr/bin/env bash
# Where the corpus lives. Leave empty to run on the mini corpus (built on the fly, CPU only).
# Example: MELD=/data/corpora/MELD.Raw   (holding train/, dev_sent_emo.csv, test_sent_emo.csv and the
# extracted clip folders train/train_splits, dev_splits_complete, output_repeated_splits_test)
MELD="${MELD:-}"
