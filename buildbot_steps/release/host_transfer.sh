# host_transfer.sh: the push's transfer into one slot, under the deploy
# root's lock (part of the host script: see host_release.sh's top for the
# layout, the order of the parts and the usage).
#
# A push rsyncs in place into the slot it replaces (never the live one nor its
# rollback target), after hard-linking into it what changed since its own
# release from the live one (changed_since_old_list, from the two releases'
# kept entry lists; link_from_live, walking both trees, when the lists are
# not at hand), so it does the work of the difference: unchanged files stay
# as they are. The slot's manifest goes first, so the slot is incomplete
# (never flippable) until the transfer finished and the manifest is rewritten.

do_transfer() {
  check_rsync "$@"
  acquire_lock "$owner"
  work=$root/.bbcd
  choose_slot
  open_slot
  # The same command with its last word, NEXT/, replaced by the chosen slot
  # (and --link-dest after its first, when owners are kept: see open_slot).
  count=$#
  index=0
  for arg in "$@"; do
    [ "$index" -ne 0 ] || set --
    index=$((index + 1))
    if [ "$index" -eq "$count" ]; then set -- "$@" "$slot_dir/"; else set -- "$@" "$arg"; fi
    if [ "$index" -eq 1 ] && [ -n "$link_dest" ]; then set -- "$@" "--link-dest=$link_dest"; fi
  done
  set +e
  "$@"
  code=$?
  set -e
  [ "$code" -eq 0 ] || exit "$code" # rsync's own code: the fan-out retries the transient ones
  apply_modes "$slot_dir"
  do_commit
  prune_slots_beyond
}

# check_rsync ARG...: the transfer command is rsync writing into the next
# slot: locally `rsync ... SOURCE/ MODES NEXT/`, over ssh the receiving
# `rsync --server ... . NEXT/` (never --sender: a push writes, never reads).
check_rsync() {
  [ "$1" = rsync ] || die $EXIT_USAGE "transfer: expected an rsync command, got '$1'"
  for arg in "$@"; do
    [ "$arg" != --sender ] || die $EXIT_USAGE "transfer: rsync must receive, not send"
    [ "$arg" != --inplace ] || die $EXIT_USAGE "transfer: never --inplace (files are shared with the live slot)"
    destination=$arg
  done
  [ "$destination" = "$rel/next/" ] ||
    die $EXIT_USAGE "transfer: rsync must write into $rel/next/, not '$destination'"
}

# open_slot: the chosen slot, made incomplete before anything is written into
# it: whatever is at its name becomes a real directory without a manifest.
# Every process counts here (this runs on every host of every push): one rm
# and one mkdir for all the names (none when they are there), one b2sum for
# both kept entry lists.
open_slot() {
  slot_dir=$rel/$chosen
  old_list='' live_list=''
  if is_slot_dir "$chosen" && read_manifest "$slot_dir/.release"; then old_list=$m_list; fi
  if [ -n "$live" ] && read_manifest "$rel/$live/.release"; then live_list=$m_list; fi
  fresh=yes linked_all=no settled_listed=no empty_before=no link_dest=''
  if [ -L "$slot_dir" ] || { [ -e "$slot_dir" ] && [ ! -d "$slot_dir" ]; }; then
    set -- "$slot_dir"
  elif [ -d "$slot_dir" ]; then
    set -- "$slot_dir/.release" "$slot_dir/.release.tmp" "$slot_dir/.release.list" "$slot_dir/.release.modes"
    fresh=no
  else
    set --
  fi
  # What is at the names of the work files of a push (.bbcd: left by the last
  # one, not to be trusted), .incoming (the staging directory of older versions
  # of this script), modes.* and .release.modes (their mode lists) and
  # lists.comm (their join of the kept lists).
  rm -rf "$rel/.incoming" "$work/modes.old" "$work/modes.$chosen" "$work/slot.list" "$work/live.list" \
    "$work/slot.dirs" "$work/lists.comm" "$work/settled.list" "$work/link.todo" "$work/modes.want" \
    "$work/modes.paths" "$work/modes.stat" "$work/modes.todo" "$work/mode.tmp" "$work/sums" "$@"
  if [ "$owners" = kept ]; then
    open_fresh_slot
    return 0
  fi
  if [ "$fresh" = yes ] || [ ! -d "$work" ]; then mkdir -p "$slot_dir" "$work"; fi
  check_kept_lists
  if ! { [ -n "$live" ] && is_slot_dir "$live"; }; then
    # Nothing to link from (the first push on a host): rsync creates every
    # entry of a fresh slot itself.
    empty_before=$fresh
    return 0
  fi
  # A slot never written (the first pushes on a host) starts as hard links to
  # the live release: cp -al makes them far faster than rsync's per-file
  # --link-dest, and the rsync after it works in place as in any other slot.
  if [ "$fresh" = yes ]; then
    cp -al "$rel/$live/." "$slot_dir/"
    rm -rf "$slot_dir/.release" "$slot_dir/.release.tmp" "$slot_dir/.release.list"
  elif [ "$live_list_ok" = yes ] && [ "$old_list_ok" = yes ] && changed_since_old_list; then
    settled_listed=yes
    link_todo
  else
    link_from_live
  fi
  # The live release's entry list as rsync's basis for the new one: it sends
  # the lines that changed, not the list. A hard link, which rsync replaces
  # (it writes the new list to a temporary name), so the kept list stays as
  # it is; its mtime is when the master wrote it for its own push, to the
  # nanosecond, so rsync's quick check never takes it for the new list.
  if [ "$live_list_ok" = yes ]; then ln "$work/list.$live" "$slot_dir/.release.list"; fi
}

# open_fresh_slot: with owners and groups kept, rsync would chown a file it
# takes for unchanged in place, and a file of the slot may share its inode
# with the live release's: a push would change the live release's owners. So
# the slot starts empty and rsync links from the live release itself
# (--link-dest), which it does only for a file whose every kept attribute,
# owner and group included, is the tree's, and never changes a file there.
# Slower (rsync looks every file up there, see link_from_live), for
# preserve_privileged only. The mode pass then walks every entry: a linked
# file has the live release's mode, which rsync --no-perms does not compare.
open_fresh_slot() {
  rm -rf "$slot_dir"
  mkdir -p "$slot_dir" "$work"
  if [ -n "$live" ] && is_slot_dir "$live"; then link_dest=$rel/$live; else empty_before=yes; fi
}

# check_kept_lists: live_list_ok and old_list_ok say whether the entry lists
# kept for the live release and for the slot's old release (.bbcd/list.SLOT)
# are the ones their manifests record (regular files with the list= digest).
check_kept_lists() {
  live_list_ok=no old_list_ok=no
  set --
  if [ -n "$live_list" ] && is_regular "$work/list.$live"; then set -- "$@" "$work/list.$live"; fi
  if [ -n "$old_list" ] && is_regular "$work/list.$chosen"; then set -- "$@" "$work/list.$chosen"; fi
  [ $# -gt 0 ] || return 0
  b2sum -l "$LIST_DIGEST_BITS" -- "$@" >"$work/sums"
  while read -r sum name; do
    if [ "$name" = "$work/list.$live" ] && [ "$sum" = "$live_list" ]; then live_list_ok=yes; fi
    if [ "$name" = "$work/list.$chosen" ] && [ "$sum" = "$old_list" ]; then old_list_ok=yes; fi
  done <"$work/sums"
}

is_regular() {
  [ -f "$1" ] && [ ! -L "$1" ]
}

# changed_since_old_list: the slot holds an older release and both kept lists
# are at hand: the files to link from the live release (link.todo) are those
# whose line in the live list is not in the slot's old list (new, or changed
# in mode, size or mtime since), found by one awk over the two lists, without
# walking either tree. A file whose line is in both is, in the slot, what it
# is in the live release by rsync's own quick check, which the rsync after
# this applies to it in any case.
#
# settled.list gets the live list's lines whose entry the slot will hold
# with that line's mode before rsync runs, for the mode pass: a file kept
# (its line in both lists) or linked from the live release (its line in the
# live list only), and a directory kept; each with a plain mode (see
# want_candidates).
#
# Safe as link_from_live: a file is linked only into a directory the slot
# holds as a real one (slot.dirs: find never follows symlinks), only over a
# regular file, a symlink or nothing (cp replaces the name, never follows it),
# never at the manifest names.
changed_since_old_list() {
  find "$slot_dir" -type d -printf '%P\n' >"$work/slot.dirs"
  # Entry lines: MODE SIZE MTIME PATH, SIZE and MTIME "-" for a directory.
  awk -v settled="$work/settled.list" '
    BEGIN { printf "" > settled }
    FILENAME == ARGV[1] { dir[$0] = 1; next }
    FILENAME == ARGV[2] { old[$0] = 1; next }
    $0 in old { if ($0 ~ /^[0-7][0145][0145] /) print > settled; next }
    {
      rest = $0
      for (f = 0; f < 3; f++) { i = index(rest, " "); field[f] = substr(rest, 1, i - 1); rest = substr(rest, i + 1) }
      if (field[1] == "-" || rest == ".release" || rest == ".release.tmp" || rest == ".release.list") next
      if ($0 ~ /^[0-7][0145][0145] /) print > settled
      if (rest in dir) next
      parent = rest; if (!sub(/\/[^\/]*$/, "", parent)) parent = ""
      if (parent in dir) print rest
    }' "$work/slot.dirs" "$work/list.$chosen" "$work/list.$live" >"$work/link.todo"
}

# link_from_live: the slot holds an older release and the kept lists are not
# at hand (a push by an older version of this script, a list that is not the
# one its manifest records): hard-link into it, from the live release, every
# regular file it lacks or holds as another inode, found by walking both
# trees. This is --link-dest's job, done here because rsync (3.4 and later)
# looks every file of the tree up in the --link-dest directory, opening each
# path component on its own: ~35 system calls per file; measured on 3,000
# files, 0.25 s of CPU per push against 0.11 s for an in-place rsync of a 1%
# change.
#
# Safe by construction: a file is linked only into a directory the slot holds
# as a real directory (find never follows symlinks, and cp --parents then
# only walks those), only over a regular file or nothing (never over a
# directory or symlink: rsync replaces those), never at the manifest names; a
# link shares the live file's inode and cp changes nothing of it. Best effort:
# a file not linked is transferred by rsync instead (and apply_modes then
# walks every entry).
link_from_live() {
  find "$slot_dir" -printf '%y %i %P\n' >"$work/slot.list"
  find "$rel/$live" -type f -printf '%i %P\n' >"$work/live.list"
  # Lines of slot.list: TYPE INODE PATH (the top is the directory ""); of
  # live.list: INODE PATH. Prints the live paths to link.
  awk '
    NR == FNR {
      type = substr($0, 1, 1); rest = substr($0, 3); i = index(rest, " "); path = substr(rest, i + 1)
      if (type == "d") dir[path] = 1; else if (type == "f") inode[path] = substr(rest, 1, i - 1); else other[path] = 1
      next
    }
    {
      i = index($0, " "); path = substr($0, i + 1)
      if (path == ".release" || path == ".release.tmp" || path == ".release.list" || (path in dir) || (path in other)) next
      if ((path in inode) && inode[path] == substr($0, 1, i - 1)) next
      parent = path; if (!sub(/\/[^\/]*$/, "", parent)) parent = ""
      if (parent in dir) print path
    }' "$work/slot.list" "$work/live.list" >"$work/link.todo"
  link_todo
}

# link_todo: the live release's files named in link.todo, hard-linked into
# the slot at the same paths, in one batch.
link_todo() {
  if (cd "$rel/$live" && xargs -d '\n' -r cp -l --remove-destination --parents -t "$slot_dir" -- <"$work/link.todo"); then
    linked_all=yes
  else
    echo "host_release: note: some files not linked from the live release; rsync transfers them" >&2
  fi
}

# apply_modes SLOT_DIR: give every file and directory the mode the tree wants.
#
# rsync runs with --no-perms because a file of this slot may be a hard link to
# the live release's (or another slot's) file, and rsync would chmod such a
# file in place when only its mode changed, changing the live release with it.
# Without perms it never does; here a file whose mode must change is first
# copied (cp -p) and renamed over its name when it has other links, so the
# shared inode is never touched. .release.list, written by the master, holds
# a line "MODE SIZE MTIME PATH" per file and "MODE - - PATH" per directory
# (MODE octal as find's %m, MTIME in nanoseconds, "." for the slot itself).
#
# Which entries to look at: when the slot was empty before rsync ran, or was
# linked from the live release by the kept lists (changed_since_old_list),
# only the candidates want_candidates names, looked at by one stat (none when
# there are none): the work of the difference. Otherwise every
# entry of the slot (a find walk; find never follows symlinks, so only real
# entries of this slot are changed). Either way the entries to change go to
# modes.todo as "MODE LINKS PATH".
apply_modes() {
  dir=$1
  list=$dir/.release.list
  is_regular "$list" || die $EXIT_USAGE "transfer: no entry list $list in the transfer"
  want=$work/modes.want
  if ! candidates_listed "$dir"; then
    want=$list
    find "$dir" \( -type f -o -type d \) -printf '%m %n 0 %P\n' >"$work/modes.stat"
  fi
  if [ -s "$work/modes.stat" ]; then modes_to_change "$want" "$work/modes.stat" >"$work/modes.todo"; else : >"$work/modes.todo"; fi
  slot_real=''
  while IFS= read -r line; do
    mode=${line%% *} rest=${line#* }
    links=${rest%% *} path=$dir/${rest#* }
    case $mode in '' | *[!0-7]* | ?????*) die $EXIT_USAGE "transfer: bad mode '$mode' in $list" ;; esac
    in_slot "$dir" "${rest#* }" ||
      die $EXIT_USAGE "transfer: the entry list is not the tree's: '${rest#* }' lies through a symlink (was the tree changed while it was pushed?)"
    # Two leading zeros: GNU chmod keeps a directory's setuid and setgid bits
    # for a numeric mode of four digits or fewer (a directory made under a
    # setgid one inherits the bit), and clears them only for a longer one.
    if [ "$links" -gt 1 ] && [ -f "$path" ] && [ ! -L "$path" ]; then
      cp -p "$path" "$work/mode.tmp"
      chmod "00$mode" "$work/mode.tmp"
      in_writable_directory "${path%/*}" mv -f -T "$work/mode.tmp" "$path"
    else
      chmod "00$mode" "$path"
    fi
  done <"$work/modes.todo"
  # Kept for the next push into another slot (it replaces the slot's old
  # list); its digest, computed by the master that wrote it, goes into the
  # manifest.
  mv -f -T "$list" "$work/list.$chosen"
}

# in_writable_directory DIR COMMAND...: COMMAND, which writes into DIR (a
# directory of this slot, never shared), with DIR made writable to us for
# that long when it is not: a deploy user other than root cannot rename into
# a read-only (0555) directory, whichever of it or its entries changed mode.
in_writable_directory() {
  dir_of_entry=$1
  shift
  if [ -w "$dir_of_entry" ]; then
    "$@"
    return
  fi
  dir_mode=$(stat -c %a "$dir_of_entry")
  chmod u+w "$dir_of_entry"
  "$@"
  chmod "00$dir_mode" "$dir_of_entry"
}

# in_slot DIR PATH: whether PATH's directory is DIR's own, reached through
# no symlink. stat and find never follow the entry itself, but stat follows
# the directories on its way: an entry list that is not the tree's (a tree
# changed between the master's walk and rsync's) could send chmod or mv out
# of the slot. One `cd -P` per entry to change, and there are few.
in_slot() {
  case $2 in */*) ;; *) return 0 ;; esac
  [ -n "$slot_real" ] || slot_real=$(cd -P -- "$1" && pwd)
  [ "$(cd -P -- "$1/${2%/*}" 2>/dev/null && pwd)" = "$slot_real/${2%/*}" ]
}

# candidates_listed DIR: whether the entries whose mode may be wrong are
# known without walking DIR (modes.want, and their stat in modes.stat).
candidates_listed() {
  if [ "$empty_before" = yes ]; then
    want_candidates "$1" /dev/null created
  else
    [ "$linked_all" = yes ] && [ "$settled_listed" = yes ] && want_candidates "$1" "$work/settled.list" kept
  fi
}

# want_candidates DIR SETTLED HOW: the lines of DIR's new list whose entry
# may not have its mode yet go to modes.want, and one stat of their paths to
# modes.stat ("MODE LINKS TYPE PATH"). Either rsync --no-perms created every
# entry of an empty slot under umask 022 (HOW is created): an entry whose
# mode has no group/other write and no setuid/setgid/sticky bit (a plain
# mode) then has it already; the others, and every directory (a setgid
# parent passes its bit on to a new directory), are candidates. Or the slot
# was linked from the live release by the kept lists (HOW is kept): a line
# in SETTLED (changed_since_old_list) is an entry the slot held with that
# mode before rsync ran, and rsync kept it or rewrote it keeping the mode of
# the file it replaced; an entry rsync created (one the slot lacked after
# all) with a plain mode has it too. Any other line is a candidate.
want_candidates() {
  awk -v paths="$work/modes.paths" -v how="$3" '
    BEGIN { printf "" > paths }
    FILENAME == ARGV[1] { settled[$0] = 1; next }
    $0 in settled { next }
    how == "created" && /^[0-7][0145][0145] / && $2 != "-" { next }
    {
      print
      path = $0; for (f = 0; f < 3; f++) path = substr(path, index(path, " ") + 1)
      print path > paths
    }' "$2" "$1/.release.list" >"$work/modes.want" &&
    stat_wanted "$1"
}

# stat_wanted DIR: one stat of the paths of modes.paths into modes.stat; none
# when there are none.
stat_wanted() {
  : >"$work/modes.stat"
  [ -s "$work/modes.paths" ] || return 0
  # stat without -L reports a symlink as one (type a...), skipped by
  # modes_to_change; a path not there (xargs: 123) has nothing to change.
  (cd "$1" && xargs -d '\n' -r stat -c '%a %h %f %n' -- <"$work/modes.paths" >"$work/modes.stat" 2>/dev/null) ||
    [ $? -eq 123 ]
}

# modes_to_change WANT STAT: "MODE LINKS PATH" for every file or directory of
# STAT ("MODE LINKS TYPE PATH": TYPE is stat's raw mode in hex, or 0 when only
# files and directories were listed) whose mode is not the one WANT (entry
# lines, as .release.list's) gives it.
modes_to_change() {
  awk '
    FILENAME == ARGV[1] {
      path = $0; for (f = 0; f < 3; f++) path = substr(path, index(path, " ") + 1)
      want[path] = $1
      next
    }
    {
      mode = $1; links = $2; type = $3
      if (type != "0" && !(length(type) == 4 && (type ~ /^[84]/))) next
      path = $0; for (f = 0; f < 3; f++) path = substr(path, index(path, " ") + 1)
      if (path == "") path = "."
      if ((path in want) && want[path] != mode) print want[path] " " links " " path
    }' "$1" "$2"
}

do_commit() {
  m_revision=$revision m_build=$build m_time=$release_time m_seq=$((top_seq + 1)) m_list=$list_digest
  m_previous='' m_previous_seq=''
  # Written last (open_slot removed whatever was at these names, and rsync
  # excludes them): a slot with a manifest is complete, by this script's word only.
  write_manifest "$rel/$chosen/.release"
  # stdout belongs to rsync's protocol over ssh: the result goes to stderr.
  echo "host_release: committed slot=$chosen seq=$m_seq" >&2
}
