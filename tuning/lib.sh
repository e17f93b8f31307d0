# shellcheck shell=bash
# Shared by the tuning scripts; source it, do not run it.
#
# Every change goes through `set_value PATH VALUE REASON`: it reads the current value, and
#   - if it already matches, prints `ok`;
#   - in a dry run (the default) prints what it would change and the command that undoes it;
#   - with --apply writes the value, prints the undo command, and appends it to $UNDO_FILE
#     (default /var/tmp/corelog-tuning-undo.sh) so that `bash $UNDO_FILE` restores the host.
# TUNING_ROOT prefixes every /sys and /proc path (the tests point it at a fixture tree).
set -uo pipefail

ROOT=${TUNING_ROOT:-}
APPLY=0
UNDO_FILE=${UNDO_FILE:-/var/tmp/corelog-tuning-undo.sh}
FAILED=0
ARGS=()

parse_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --apply) APPLY=1 ;;
      -h|--help) usage; exit 0 ;;
      *) ARGS+=("$1") ;;
    esac
    shift
  done
  if [ "$APPLY" = 1 ] && [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then
    echo "--apply changes the host and needs root" >&2
    exit 2
  fi
}

# The bracketed choice of a sysfs list ("none [mq-deadline]" -> mq-deadline), or the value.
current() {
  local v
  v=$(cat "$1" 2>/dev/null) || return 1
  if [[ "$v" == *"["*"]"* ]]; then
    v=${v#*[}
    v=${v%%]*}
  fi
  # Collapse runs of blanks (tcp_rmem prints tabs).
  echo "$v" | tr -s ' \t' ' '
}

set_value() {
  local path=$1 want=$2 reason=$3 cur
  if [ ! -e "$path" ]; then
    printf 'skip  %s: not on this host\n' "$path"
    return 0
  fi
  cur=$(current "$path") || { printf 'skip  %s: unreadable\n' "$path"; return 0; }
  if [ "$cur" = "$want" ]; then
    printf 'ok    %s = %s\n' "$path" "$want"
    return 0
  fi
  local undo="echo '$cur' > $path"
  if [ "$APPLY" = 1 ]; then
    if echo "$want" > "$path" 2>/dev/null; then
      printf 'set   %s: %s -> %s  (%s)\n' "$path" "$cur" "$want" "$reason"
      printf 'undo: %s\n' "$undo"
      echo "$undo" >> "$UNDO_FILE"
    else
      printf 'FAIL  %s: could not write %s (%s)\n' "$path" "$want" "$reason"
      FAILED=1
    fi
  else
    printf 'would set %s: %s -> %s  (%s)\n' "$path" "$cur" "$want" "$reason"
    printf 'undo: %s\n' "$undo"
  fi
}

# Raises (never lowers) a numeric setting, field by field (tcp_rmem has three fields).
set_at_least() { bound_value "$1" "$2" "$3" ge; }
# Lowers (never raises) a numeric setting.
set_at_most() { bound_value "$1" "$2" "$3" le; }

bound_value() {
  local path=$1 want=$2 reason=$3 op=$4 cur new="" i
  cur=$(current "$path" 2>/dev/null) || { set_value "$path" "$want" "$reason"; return; }
  local -a c w
  read -ra c <<< "$cur"
  read -ra w <<< "$want"
  if [ ${#c[@]} -ne ${#w[@]} ]; then set_value "$path" "$want" "$reason"; return; fi
  for i in "${!w[@]}"; do
    if { [ "$op" = ge ] && [ "${c[$i]}" -ge "${w[$i]}" ]; } || { [ "$op" = le ] && [ "${c[$i]}" -le "${w[$i]}" ]; }; then
      new+="${new:+ }${c[$i]}"
    else
      new+="${new:+ }${w[$i]}"
    fi
  done
  set_value "$path" "$new" "$reason"
}

# The sysctl behind a /proc/sys path, for the notes.
sysctl_path() { echo "$ROOT/proc/sys/${1//.//}"; }

# The whole disks under a directory (partition -> disk, device-mapper -> its disks).
disks_of_dir() {
  local dir=$1 dev majmin sysdir
  dev=$(stat -c '%d' "$dir" 2>/dev/null) || return 0
  majmin="$((dev >> 8 & 0xfff | (dev >> 32 & ~0xfff))):$((dev & 0xff | (dev >> 12 & ~0xff)))"
  sysdir=$(readlink -f "$ROOT/sys/dev/block/$majmin" 2>/dev/null) || return 0
  [ -d "$sysdir" ] || return 0
  whole_disk "$sysdir"
}

whole_disk() {
  local d=$1 s
  [ -e "$d/partition" ] && d=$(dirname "$d")
  if [ -d "$d/slaves" ] && [ -n "$(ls -A "$d/slaves" 2>/dev/null)" ]; then
    for s in "$d"/slaves/*; do whole_disk "$(readlink -f "$s")"; done
  else
    basename "$d"
  fi
}

finish() {
  if [ "$APPLY" = 0 ]; then
    echo "(dry run: nothing changed; --apply to change the host)"
  elif [ -n "$ROOT" ] || [ -s "$UNDO_FILE" ]; then
    echo "(undo commands appended to $UNDO_FILE)"
  fi
  exit "$FAILED"
}
