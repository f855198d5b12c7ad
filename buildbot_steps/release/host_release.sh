# host_release.sh: the release layout on one host (POSIX sh, GNU coreutils).
#
#   ROOT/releases/0 .. releases/N-1   slots
#   ROOT/releases/.incoming           staging directory of a transfer
#   ROOT/current -> releases/K        the live release (a relative link)
#   ROOT/releases/K/.release          manifest, written last: a slot with a
#                                     manifest is complete
#
# Manifest lines: revision=, build=, time=, seq= (order of commits on this
# host), and once flipped live: previous=, previous_seq= (the slot that was
# live before, and which commit it held, so rollback follows the record and
# never directory mtimes).
#
# Usage, from buildbot_steps.release (over ssh the script comes on stdin):
#   sh -s -- ACTION ARG...      or      sh host_release.sh ACTION ARG...
#   prepare  ROOT                                 empty the staging directory
#   commit   ROOT SLOTS REVISION BUILD TIME       staging -> a free slot
#   flip     ROOT REVISION                        make REVISION live
#   rollback ROOT [LIVE_REVISION]                 back to the recorded previous
#   status   ROOT SLOTS                           what is live, what is where
#
# The caller validated every ARG ([A-Za-z0-9._/-] only); we check again,
# because over ssh these words went through the remote user's shell.
#
# Exit codes avoid rsync's and ssh's transient codes (10 12 23 30 35 255),
# which the fan-out would retry: 3 bad usage, 4 no such release, 5 the flip did
# not verify. A failing mv/rm (full disk...) exits with its own code via set -e.
set -eu
umask 022

EXIT_USAGE=3
EXIT_NO_RELEASE=4
EXIT_NOT_VERIFIED=5

die() {
  code=$1
  shift
  echo "host_release: $*" >&2
  exit "$code"
}

check_word() {
  case $1 in
    '' | *[!A-Za-z0-9._/-]* | -*) die $EXIT_USAGE "unsafe argument: '$1'" ;;
  esac
}

check_number() {
  case $1 in
    '' | *[!0-9]*) die $EXIT_USAGE "not a number: '$1'" ;;
  esac
}

check_root() {
  check_word "$1"
  case $1 in
    /*) ;;
    *) die $EXIT_USAGE "deploy root must be absolute: '$1'" ;;
  esac
  case /$1/ in
    */../*) die $EXIT_USAGE "deploy root must not contain '..': '$1'" ;;
  esac
}

# read_manifest FILE: sets m_revision m_build m_time m_seq m_previous
# m_previous_seq; false when FILE is missing. Shell builtins only (no
# process per read): this runs on every host of every deploy.
read_manifest() {
  m_revision='' m_build='' m_time='' m_seq='' m_previous='' m_previous_seq=''
  [ -f "$1" ] || return 1
  while IFS='=' read -r key value; do
    case $key in
      revision) m_revision=$value ;;
      build) m_build=$value ;;
      time) m_time=$value ;;
      seq) m_seq=$value ;;
      previous) m_previous=$value ;;
      previous_seq) m_previous_seq=$value ;;
    esac
  done <"$1"
  m_seq=${m_seq:-0}
}

# write_manifest FILE: from the m_* variables, atomically (tmp + rename).
write_manifest() {
  {
    printf 'revision=%s\nbuild=%s\ntime=%s\nseq=%s\n' "$m_revision" "$m_build" "$m_time" "$m_seq"
    if [ -n "$m_previous" ]; then
      printf 'previous=%s\nprevious_seq=%s\n' "$m_previous" "$m_previous_seq"
    fi
  } >"$1.tmp"
  mv "$1.tmp" "$1"
}

# Sets `live` to the slot `current` points at; empty when nothing is live.
find_live() {
  live=''
  target=$(readlink "$root/current" 2>/dev/null) || return 0
  case $target in
    releases/*) live=${target#releases/} ;;
  esac
}

# switch_current SLOT: atomic flip. A temporary link is renamed over
# `current` (rename(2) via mv -T), so there is never a moment without one;
# `ln -sfn` is unlink + symlink on older coreutils.
switch_current() {
  tmp_link=$root/.current.tmp.$$
  rm -f "$tmp_link"
  ln -s "releases/$1" "$tmp_link"
  mv -T "$tmp_link" "$root/current"
  [ "$(readlink "$root/current")" = "releases/$1" ] ||
    die $EXIT_NOT_VERIFIED "current does not point at releases/$1 after the flip"
}

do_prepare() {
  mkdir -p "$root/releases"
  rm -rf "$root/releases/.incoming"
  mkdir "$root/releases/.incoming"
}

# Sets `chosen`, the slot to overwrite: never the live one nor its rollback
# target; a slot without a manifest first (free, or a commit that did not
# finish), else the oldest commit. Sets `top_seq`, the newest commit.
choose_slot() {
  find_live
  keep=''
  if [ -n "$live" ] && read_manifest "$rel/$live/.release"; then keep=$m_previous; fi
  chosen='' chosen_seq='' free='' top_seq=0
  i=0
  while [ "$i" -lt "$slots" ]; do
    if read_manifest "$rel/$i/.release"; then
      if [ "$m_seq" -gt "$top_seq" ]; then top_seq=$m_seq; fi
      if [ "$i" != "$live" ] && [ "$i" != "$keep" ] && { [ -z "$chosen" ] || [ "$m_seq" -lt "$chosen_seq" ]; }; then
        chosen=$i chosen_seq=$m_seq
      fi
    elif [ -z "$free" ] && [ "$i" != "$live" ] && [ "$i" != "$keep" ]; then
      free=$i
    fi
    i=$((i + 1))
  done
  chosen=${free:-$chosen}
  [ -n "$chosen" ] || die $EXIT_USAGE "no slot free among $slots"
}

do_commit() {
  [ -d "$rel/.incoming" ] || die $EXIT_USAGE "nothing staged in $rel/.incoming"
  choose_slot
  rm -rf "${rel:?}/$chosen"
  mv "$rel/.incoming" "$rel/$chosen"
  m_revision=$revision m_build=$build m_time=$release_time m_seq=$((top_seq + 1)) m_previous='' m_previous_seq=''
  # Written last, replacing any .release the tree brought: a slot with a
  # manifest is complete.
  write_manifest "$rel/$chosen/.release"
  echo "slot=$chosen seq=$m_seq"
}

# Sets `found` to the complete slot holding REVISION, the newest commit if
# several; empty if none.
find_release() {
  found='' found_seq=-1
  for manifest in "$rel"/*/.release; do
    read_manifest "$manifest" || continue
    if [ "$m_revision" = "$1" ] && [ "$m_seq" -gt "$found_seq" ]; then
      found=${manifest%/.release}
      found=${found##*/}
      found_seq=$m_seq
    fi
  done
}

do_flip() {
  find_release "$revision"
  [ -n "$found" ] || die $EXIT_NO_RELEASE "no complete release of revision $revision"
  find_live
  if [ "$live" = "$found" ]; then
    echo "live=$found previous= changed=no"
    return 0
  fi
  # Record where we came from in the new release's manifest, before it goes
  # live: rollback follows this record.
  if [ -n "$live" ] && read_manifest "$rel/$live/.release"; then
    live_seq=$m_seq
    read_manifest "$rel/$found/.release"
    m_previous=$live m_previous_seq=$live_seq
    write_manifest "$rel/$found/.release"
  fi
  switch_current "$found"
  echo "live=$found previous=$live changed=yes"
}

do_rollback() {
  find_live
  [ -n "$live" ] && read_manifest "$rel/$live/.release" || die $EXIT_NO_RELEASE "nothing live to roll back from"
  if [ -n "$expected" ] && [ "$m_revision" != "$expected" ]; then
    # Not on the release being rolled back (never flipped, or done already).
    echo "live=$live previous= changed=no"
    return 0
  fi
  previous=$m_previous previous_seq=$m_previous_seq
  [ -n "$previous" ] || die $EXIT_NO_RELEASE "no previous release recorded for slot $live"
  read_manifest "$rel/$previous/.release" && [ "$m_seq" = "$previous_seq" ] ||
    die $EXIT_NO_RELEASE "the previous release (slot $previous) has been replaced or is incomplete"
  switch_current "$previous"
  echo "live=$previous previous=$live changed=yes"
}

do_status() {
  find_live
  echo "live=$live"
  i=0
  while [ "$i" -lt "$slots" ]; do
    if read_manifest "$rel/$i/.release"; then
      echo "slot=$i state=complete revision=$m_revision build=$m_build time=$m_time seq=$m_seq previous=$m_previous previous_seq=$m_previous_seq"
    elif [ -d "$rel/$i" ]; then
      echo "slot=$i state=incomplete"
    else
      echo "slot=$i state=empty"
    fi
    i=$((i + 1))
  done
}

[ $# -ge 2 ] || die $EXIT_USAGE "usage: ACTION ROOT ARG..."
action=$1
root=$2
check_root "$root"
rel=$root/releases
shift 2
for arg in "$@"; do check_word "$arg"; done

case $action in
  prepare)
    [ $# -eq 0 ] || die $EXIT_USAGE "usage: prepare ROOT"
    do_prepare
    ;;
  commit)
    [ $# -eq 4 ] || die $EXIT_USAGE "usage: commit ROOT SLOTS REVISION BUILD TIME"
    slots=$1 revision=$2 build=$3 release_time=$4
    check_number "$slots"
    do_commit
    ;;
  flip)
    [ $# -eq 1 ] || die $EXIT_USAGE "usage: flip ROOT REVISION"
    revision=$1
    do_flip
    ;;
  rollback)
    [ $# -le 1 ] || die $EXIT_USAGE "usage: rollback ROOT [LIVE_REVISION]"
    expected=${1:-}
    do_rollback
    ;;
  status)
    [ $# -eq 1 ] || die $EXIT_USAGE "usage: status ROOT SLOTS"
    slots=$1
    check_number "$slots"
    do_status
    ;;
  *) die $EXIT_USAGE "unknown action: '$action'" ;;
esac
