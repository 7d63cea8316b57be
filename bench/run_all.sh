#!/usr/bin/env bash
# Runs serkit's benchmarks and keeps each one's printed table in bench/latest/<name>.txt (their JSON
# lands beside the scripts); `python tools/update_readme.py` then pastes the tables into README.md.
# Benchmarks print ratios measured within one run; they are not tests and assert nothing.
#
#   bash bench/run_all.sh                 # all (the sklearn k-means reference alone takes ~15 min on 2 cores)
#   bash bench/run_all.sh shift dump      # some
#   bash bench/run_all.sh batching        # length-bucketed batching: padding, finetuning, head overhead (~20 min)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(shift kmeans dump train_throughput batching)
for name in "${names[@]}"; do
  case "$name" in
    shift) cmd=(python bench/bench_shift.py) ;;
    kmeans) cmd=(python bench/bench_kmeans.py) ;;
    dump) cmd=(python bench/bench_dump.py --hours 1 7) ;;
    train_throughput) cmd=(python bench/bench_train_throughput.py --out bench/bench_train_throughput.json) ;;
    batching) cmd=(python bench/bench_batching.py) ;;
    *) echo "unknown benchmark '$name' (shift kmeans dump train_throughput batching)" >&2; exit 2 ;;
  esac
  echo "== $name: ${cmd[*]}" >&2
  { echo "\$ ${cmd[*]}   # $(date -u '+%Y-%m-%d'), $(nproc --all) CPU cores$(python -c 'import torch; print(", " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else ", no GPU")')";
    "${cmd[@]}"; } | tee "bench/latest/$name.txt.tmp"
  mv "bench/latest/$name.txt.tmp" "bench/latest/$name.txt"
done
