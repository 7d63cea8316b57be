#!/usr/bin/env bash
# Parses --long-option value pairs into the shell variables of the same name (dashes -> underscores).
#
# Source it after declaring defaults and a `help_message`:
#     stage=0; nclusters=50
#     . local/parse_options.sh
#     bash run.sh --stage 3 --nclusters 100
# Only variables that already exist can be set, so a typo fails instead of being ignored.
# `--help` prints $help_message. `--options-file FILE` sets options from FILE's `name=value` lines
# (Kaldi style; blank lines and `#` comments allowed; dashes in a name read as underscores), applied
# where it stands, so later options override it. FILE is read, never run: each value is taken
# literally (no quotes removed, no $ expanded), and any other line (e.g. YAML's `key: value`) is
# refused, naming the file and the line. `--config` is a recipe's own option where it declares
# `config` (SAVEE: its trainer YAML); elsewhere it fails, naming --options-file.

# _serkit_options_file FILE: sets the variables FILE's name=value lines name.
_serkit_options_file() {
  local _po_file=$1 _po_line _po_name _po_n=0
  [ -f "$_po_file" ] || { echo "$0: --options-file $_po_file: no such file" >&2; exit 1; }
  while IFS= read -r _po_line || [ -n "$_po_line" ]; do
    _po_n=$((_po_n + 1))
    _po_line=${_po_line%$'\r'}
    [[ "$_po_line" =~ ^[[:space:]]*(#.*)?$ ]] && continue
    if [[ ! "$_po_line" =~ ^[[:space:]]*(--)?([A-Za-z_][A-Za-z0-9_-]*)=(.*)$ ]]; then
      echo "$0: --options-file $_po_file, line $_po_n: '$_po_line' is not a name=value line (the file holds shell-style" \
        "name=value options, one a line, e.g. 'stage=2'; a YAML or other config goes to the option that takes it)" >&2
      exit 1
    fi
    _po_name=${BASH_REMATCH[2]//-/_}
    if [ -z "${!_po_name+set}" ] || [ "$_po_name" = help_message ] || [[ "$_po_name" == _po_* ]]; then
      echo "$0: --options-file $_po_file, line $_po_n: unknown option '$_po_name' (see $0 --help)" >&2; exit 1
    fi
    printf -v "$_po_name" '%s' "${BASH_REMATCH[3]}"
  done < "$_po_file"
}

while true; do
  [ -z "${1:-}" ] && break
  case "$1" in
    --help|-h)
      printf '%s\n' "${help_message:-no help}"; exit 0 ;;
    --options-file)
      [ $# -ge 2 ] || { echo "$0: option $1 needs a value" >&2; exit 1; }
      _serkit_options_file "$2"; shift 2 ;;
    --config)
      if [ -z "${config+set}" ]; then
        echo "$0: --config: no such option; options from a file are given with --options-file FILE" \
          "(name=value lines, e.g. 'stage=2')" >&2
        exit 1
      fi
      [ $# -ge 2 ] || { echo "$0: option $1 needs a value" >&2; exit 1; }
      config=$2; shift 2 ;;
    --*=*)
      echo "$0: write '--option value', not '--option=value': $1" >&2; exit 1 ;;
    --*)
      name=$(echo "${1#--}" | tr - _)
      if [ -z "${!name+set}" ]; then
        echo "$0: unknown option $1 (see $0 --help)" >&2; exit 1
      fi
      [ $# -ge 2 ] || { echo "$0: option $1 needs a value" >&2; exit 1; }
      printf -v "$name" '%s' "$2"
      shift 2 ;;
    *) break ;;
  esac
done
true
