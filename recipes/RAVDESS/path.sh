#!/usr/bin/env bash
# The recipe's environment (shared by all recipes: ../../local/path.sh).
# shellcheck source=../../local/path.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/../../local/path.sh"
