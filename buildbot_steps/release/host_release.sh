# host_release.sh: the release layout on one host (POSIX sh, GNU coreutils 8.26+,
# findutils, flock).
#
#   ROOT/releases/0 .. releases/N-1   slots
#   ROOT/current -> releases/K        the live release (a relative link)
#   ROOT/releases/K/.release          manifest, written last: a slot with a
#                                     manifest is complete
#   ROOT/releases/K/.release.list     while a push writes slot K: the tree's
#                                     entries and their modes (see host_transfer.sh's
#                                     apply_modes)
#   ROOT/.bbcd/list.K                 slot K's entry list, kept (its digest is the
#                                     manifest's list=), and a push's work files
#   ROOT/.deploy.lock                 flock(1) lock of a transfer, flip or
#                                     rollback, with who holds it since when
#
# The host runs ONE script, the text of its parts joined in this order, then
# `main "$@"` (buildbot_steps.release.transports.host_script_text()):
#   host_release.sh    checks, lock, manifest, slots, flip, rollback, status, main
#   host_transfer.sh   the push's transfer into a slot: link from the live
#                      release, rsync, mode pass, commit
# Neither part runs anything on its own: every function is defined before
# main runs, whichever part defines it.
#
# Manifest lines: revision=, build=, time=, seq= (order of commits on this
# host), list= (BLAKE2b-256 of the slot's entry list, see host_transfer.sh's
# apply_modes), and once flipped live: previous=, previous_seq= (the slot that was
# live before, and which commit it held, so rollback follows the record and
# never directory mtimes).
#
# Usage, from buildbot_steps.release: over ssh the text comes on stdin, or for
# a push as the text of `sh -c` in rsync's --rsync-path (one ssh session);
# locally as the text of `sh -c`, the same words:
#   sh -s -- ACTION ARG...      or      sh -c TEXT host_release ACTION ARG...
#   transfer ROOT SLOTS REVISION BUILD TIME OWNER LIST OWNERS -- rsync ARG... ROOT/releases/next/
#                                                 lock, choose the slot to replace, invalidate
#                                                 its manifest, run the rsync into it (the
#                                                 receiving side over ssh; `next` stands for
#                                                 the chosen slot), set its modes, commit
#   flip     ROOT OWNER REVISION                  make REVISION live
#   rollback ROOT OWNER [LIVE_REVISION [LIVE_SEQ]]  back to the recorded previous, if
#                                                 live is that revision (and that commit)
#   status   ROOT SLOTS                           what is live, what is where
# OWNER is ACTION/REVISION/MASTER/PID/SINCE (SINCE: the master's UTC time);
# OWNERS is `kept` when rsync reproduces the tree's owners and groups
# (preserve_privileged), else `ours`;
# LIST is the BLAKE2b-256 digest of the entry list in the transfer, computed
# by the master that wrote it.
#
# Nothing in a release tree steers this script: rsync excludes .release and
# .release.tmp, commit removes whatever is at those names before writing its
# own manifest with O_EXCL (set -C: never through a symlink), and every field
# read back from a manifest is checked (slot numbers, revision a safe word):
# a manifest that fails a check makes its slot incomplete, never live.
#
# The caller validated every ARG ([A-Za-z0-9._/-] only); we check again,
# because over ssh these words went through the remote user's shell.
#
# Exit codes avoid rsync's and ssh's transient codes (10 12 23 30 35 255),
# which the fan-out would retry: 3 bad usage, 4 no such release, 5 the flip did
# not verify, 6 another deploy holds the lock, 7 a tool this script runs is
# not on the host's PATH. A failing mv/rm (full disk...) exits with its own
# code via set -e.
set -eu
umask 022

EXIT_USAGE=3
EXIT_NO_RELEASE=4
EXIT_NOT_VERIFIED=5
EXIT_BUSY=6
EXIT_MISSING_TOOL=7
# Every program this script runs: checked before an action starts, so that a
# host short of one is named and left as it was, not stopped half-way.
HOST_TOOLS='awk b2sum chmod cp find flock head ln mkdir mv readlink rm rsync stat tr xargs'
LOCK_FILE=.deploy.lock
MAX_SLOT=99 # the caller's MAX_SLOTS - 1
# b2sum: half the CPU of sha256sum on this path, which runs on every host of
# every push; 256 bits, as hashlib.blake2b(digest_size=32), which the master
# computes for the entry list it sends.
LIST_DIGEST_BITS=256

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

# check_digest DIGEST: a BLAKE2b-256 digest in hex, as b2sum prints it.
check_digest() {
  case $1 in
    *[!0-9a-f]*) die $EXIT_USAGE "not a list digest: '$1'" ;;
  esac
  [ ${#1} -eq $((LIST_DIGEST_BITS / 4)) ] || die $EXIT_USAGE "not a list digest: '$1'"
}

check_number() {
  is_number "$1" || die $EXIT_USAGE "not a number: '$1'"
}

is_number() {
  case $1 in
    '' | *[!0-9]*) return 1 ;;
  esac
}

# A slot name as it may appear in a path: digits only, at most MAX_SLOT.
is_slot() {
  is_number "$1" && [ ${#1} -le 3 ] && [ "$1" -le $MAX_SLOT ]
}

is_safe_word() {
  case $1 in
    '' | *[!A-Za-z0-9._/-]* | -*) return 1 ;;
  esac
}

# try_lock: take the deploy root's lock on fd 9, or refuse saying who holds it.
try_lock() {
  [ -d "$root" ] || mkdir -p "$root"
  lock=$root/$LOCK_FILE
  [ ! -L "$lock" ] || die $EXIT_USAGE "$lock is a symlink: remove it"
  exec 9>>"$lock"
  if ! flock -n 9; then
    holder=$(head -c 512 "$lock" | tr -c 'A-Za-z0-9._/:= \n-' '_')
    die $EXIT_BUSY "busy $(echo $holder)"
  fi
}

# acquire_lock OWNER: the deploy root's lock, held until this script (and the
# rsync it runs) exits. A kernel lock (flock): it dies with its holder, so a
# crash or kill -9 never leaves a stale lock. Refuses, never waits.
acquire_lock() {
  try_lock
  # Who holds it, for the refusal above: rewritten in place (the lock is on
  # the open file, not its content). OWNER is ACTION/REVISION/MASTER/PID/SINCE,
  # SINCE the master's UTC time (no `date` process on every host).
  : >"$lock"
  printf 'since=%s what=%s\n' "${1##*/}" "${1%/*}" >&9
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
# m_previous_seq; false when FILE is missing, not a regular file of its own
# (a symlink), or any field fails its check. Shell builtins only (no process
# per read): this runs on every host of every deploy.
read_manifest() {
  m_revision='' m_build='' m_time='' m_seq='' m_list='' m_previous='' m_previous_seq=''
  [ -f "$1" ] && [ ! -L "$1" ] || return 1
  while IFS='=' read -r key value; do
    case $key in
      revision) m_revision=$value ;;
      build) m_build=$value ;;
      time) m_time=$value ;;
      seq) m_seq=$value ;;
      list) m_list=$value ;;
      previous) m_previous=$value ;;
      previous_seq) m_previous_seq=$value ;;
    esac
  done <"$1"
  is_safe_word "$m_revision" && is_safe_word "$m_build" && is_number "$m_time" && is_number "$m_seq" ||
    return 1
  if [ -n "$m_previous$m_previous_seq" ]; then
    is_slot "$m_previous" && is_number "$m_previous_seq" || return 1
  fi
  case $m_list in *[!0-9a-f]*) m_list='' ;; esac # unknown, never "the same"
}

# write_manifest FILE: from the m_* variables, atomically (tmp + rename).
# Whatever is at FILE.tmp goes first (rm does not follow symlinks), and set -C
# creates it with O_EXCL, which never follows one; mv -T never moves into a
# directory.
write_manifest() {
  if [ -e "$1.tmp" ] || [ -L "$1.tmp" ]; then rm -rf "$1.tmp"; fi
  set -C
  {
    printf 'revision=%s\nbuild=%s\ntime=%s\nseq=%s\n' "$m_revision" "$m_build" "$m_time" "$m_seq"
    if [ -n "$m_list" ]; then printf 'list=%s\n' "$m_list"; fi
    if [ -n "$m_previous" ]; then
      printf 'previous=%s\nprevious_seq=%s\n' "$m_previous" "$m_previous_seq"
    fi
  } >"$1.tmp"
  set +C
  mv -T "$1.tmp" "$1"
}

# is_slot_dir SLOT: a real directory (not a symlink) named like a slot.
is_slot_dir() {
  is_slot "$1" && [ -d "$rel/$1" ] && [ ! -L "$rel/$1" ]
}

# Sets `live` to the slot `current` points at; empty when there is no
# `current`. Fails (live empty, current_target what it points at) for one
# made by hand or by another tool that names no slot as ours do (an absolute
# path to one, or a trailing slash, still names it).
read_current() {
  live='' current_target=''
  [ -e "$root/current" ] || [ -L "$root/current" ] || return 0
  current_target=$(readlink "$root/current") || current_target=''
  target=${current_target%/}
  case $target in
    releases/*) live=${target#releases/} ;;
    "$rel"/*) live=${target#"$rel"/} ;;
  esac
  is_slot "$live" && return 0
  live=''
  return 1
}

# find_live: read_current, or refuse: a `current` taken for nothing live
# would let a push overwrite the slot it serves.
find_live() {
  read_current ||
    die $EXIT_USAGE "$root/current is not a link to one of the slots $rel/N (it points at '$current_target'): make it one (ln -sfn releases/N current) or remove it"
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

# Slots numbered SLOTS and up (left by a larger --slots) go, except the live
# one and its rollback target (as choose_slot found them: the lock is held).
prune_slots_beyond() {
  for dir in "$rel"/*; do
    slot=${dir##*/}
    is_slot_dir "$slot" && [ "$slot" -ge "$slots" ] && [ "$slot" != "$live" ] && [ "$slot" != "$keep" ] ||
      continue
    rm -rf "${rel:?}/$slot" "$root/.bbcd/list.$slot" "$root/.bbcd/modes.$slot"
  done
}

# Sets `found` to the complete slot holding REVISION, the newest commit if
# several; empty if none.
find_release() {
  found='' found_seq=-1
  for manifest in "$rel"/*/.release; do
    slot=${manifest%/.release}
    is_slot_dir "${slot##*/}" || continue
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
  if { [ -n "$expected" ] && [ "$m_revision" != "$expected" ]; } ||
    { [ -n "$expected_seq" ] && [ "$m_seq" != "$expected_seq" ]; }; then
    # Not on the release being rolled back (never flipped, or done already:
    # the commit tells a rebuild of the same revision from the one before).
    echo "live=$live previous= changed=no"
    return 0
  fi
  previous=$m_previous previous_seq=$m_previous_seq
  [ -n "$previous" ] || die $EXIT_NO_RELEASE "no previous release recorded for slot $live"
  is_slot_dir "$previous" && read_manifest "$rel/$previous/.release" && [ "$m_seq" = "$previous_seq" ] ||
    die $EXIT_NO_RELEASE "the previous release (slot $previous) has been replaced or is incomplete"
  switch_current "$previous"
  echo "live=$previous previous=$live changed=yes"
}

status_line() {
  if is_slot_dir "$1" && read_manifest "$rel/$1/.release"; then
    echo "slot=$1 state=complete revision=$m_revision build=$m_build time=$m_time seq=$m_seq previous=$m_previous previous_seq=$m_previous_seq$2"
  elif [ -e "$rel/$1" ] || [ -L "$rel/$1" ]; then
    echo "slot=$1 state=incomplete$2"
  else
    echo "slot=$1 state=empty$2"
  fi
}

# Slots 0..SLOTS-1, then any slot beyond (a larger --slots left it; the next
# push removes it unless it is live or the rollback target).
do_status() {
  if read_current; then echo "live=$live"; else echo "live= current=unrecognised"; fi
  i=0
  while [ "$i" -lt "$slots" ]; do
    status_line "$i" ''
    i=$((i + 1))
  done
  for dir in "$rel"/*; do
    slot=${dir##*/}
    if is_slot "$slot" && [ "$slot" -ge "$slots" ]; then status_line "$slot" ' beyond=yes'; fi
  done
}

# require_tools: every HOST_TOOLS program on PATH (command -v is a builtin:
# no process), or one message naming the first missing one.
require_tools() {
  for tool in $HOST_TOOLS; do
    command -v "$tool" >/dev/null 2>&1 ||
      die $EXIT_MISSING_TOOL "'$tool' is not on this host's PATH ($PATH): install rsync, util-linux (flock), GNU coreutils 8.26 or later and GNU findutils"
  done
}

# main ACTION ROOT ARG...: check the words, then run the action. A function,
# called by the last line of the joined text (`main "$@"`, see the top), so
# nothing runs before every part of the script is defined.
main() {
  [ $# -ge 2 ] || die $EXIT_USAGE "usage: ACTION ROOT ARG..."
  require_tools
  action=$1
  root=$2
  check_root "$root"
  rel=$root/releases
  shift 2
  if [ "$action" != transfer ]; then
    for arg in "$@"; do check_word "$arg"; done
  fi

  case $action in
    transfer)
      [ $# -ge 9 ] && [ "$8" = -- ] || die $EXIT_USAGE "usage: transfer ROOT SLOTS REVISION BUILD TIME OWNER LIST OWNERS -- rsync ARG... ROOT/releases/next/"
      slots=$1 revision=$2 build=$3 release_time=$4 owner=$5 list_digest=$6 owners=$7
      for arg in "$slots" "$revision" "$build" "$release_time" "$owner"; do check_word "$arg"; done
      check_number "$slots"
      check_number "$release_time"
      check_digest "$list_digest"
      case $owners in kept | ours) ;; *) die $EXIT_USAGE "transfer: OWNERS must be kept or ours, got '$owners'" ;; esac
      shift 8
      do_transfer "$@"
      ;;
    flip)
      [ $# -eq 2 ] || die $EXIT_USAGE "usage: flip ROOT OWNER REVISION"
      revision=$2
      acquire_lock "$1"
      do_flip
      ;;
    rollback)
      [ $# -ge 1 ] && [ $# -le 3 ] || die $EXIT_USAGE "usage: rollback ROOT OWNER [LIVE_REVISION [LIVE_SEQ]]"
      expected=${2:-} expected_seq=${3:-}
      [ -z "$expected_seq" ] || check_number "$expected_seq"
      acquire_lock "$1"
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
}
