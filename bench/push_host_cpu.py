#!/usr/bin/env python3
"""The host side of a steady push alone: our host script and its rsync against a plain in-place rsync.

    .venv/bin/python bench/push_host_cpu.py [--repeat 7] [--size-mb 50] [--files 3000]

bench/push_bench.py measures whole pushes over ssh, where 50 hosts share the
machine's 2 CPUs with the deploying side; this isolates what our host script
adds on one host, with no ssh and no other work in the way. Same trees as
push_bench.py (bench/push_trees.py: a base tree and 5 revisions, each 1 %
changed from the one before). Per repetition, on a fresh deploy root in a
tmpfs:
  ours   buildbot_steps.release over its local transport pushes and flips
         every revision but the last (untimed), then pushes the last: it lands
         in the slot holding the base tree, 5 revisions old, with 1 % changed
         from the live release (the steady push of push_bench.py);
  rsync  `rsync -a --delete` of the last revision in place over a copy of the
         revision before (prsync's and clush's steady push, without ssh).
Both run the rsync's two sides on this machine, so what "ours" costs beyond
"rsync" is the host script: its lock, slot choice, links from the live
release, mode pass and commit. CPU is the children's user + system time
(getrusage), which counts every process of the push; the medians are printed.
"""

from __future__ import annotations

import argparse
import pathlib
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile

from push_trees import MIB, make_chain, make_tree

from buildbot_steps import release

REVISIONS = 5  # as push_bench.py: the steady push lands in the slot of the base tree
SLOTS = 5
SEED = 20261126


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def ours_steady_push_cpu_s(trees: list[pathlib.Path], scratch: pathlib.Path) -> float:
    root = scratch / "host"
    inventory = release.Inventory.from_entries(
        [{"name": "h1", "address": "127.0.0.1", "deploy_root": str(root)}]
    )
    runner = release.ReleaseRunner(inventory, release.LocalTransport(), slots=SLOTS)
    for n, tree in enumerate(trees[:-1]):
        if not (runner.push(tree, f"r{n}").all_ok and runner.flip(f"r{n}").all_ok):
            sys.exit(f"push_host_cpu: the warm-up push of {tree} failed")
    before = children_cpu_s()
    pushed = runner.push(trees[-1], "steady")
    spent = children_cpu_s() - before
    if not pushed.all_ok:
        sys.exit(f"push_host_cpu: the steady push failed: {pushed.to_text()}")
    return spent


def plain_rsync_cpu_s(trees: list[pathlib.Path], scratch: pathlib.Path) -> float:
    copy = scratch / "copy"
    subprocess.run(["cp", "-a", "--", f"{trees[-2]}/.", str(copy)], check=True)
    before = children_cpu_s()
    subprocess.run(["rsync", "-a", "--delete", f"{trees[-1]}/", f"{copy}/"], check=True)
    return children_cpu_s() - before


def milliseconds(seconds: list[float]) -> str:
    return ", ".join(f"{1000 * s:.1f}" for s in seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="repetitions; medians are printed (default 7)")
    parser.add_argument("--size-mb", type=float, default=50, help="release tree size in MiB (default 50)")
    parser.add_argument("--files", type=int, default=3000, help="files in the tree (default 3000)")
    args = parser.parse_args()
    base_dir = "/dev/shm" if pathlib.Path("/dev/shm").is_dir() else None
    work = pathlib.Path(tempfile.mkdtemp(prefix="push-host-cpu-", dir=base_dir))
    try:
        base = make_tree(work / "tree1", int(args.size_mb * MIB), args.files, SEED)
        chain, change = make_chain(base, work, REVISIONS, 0.01, SEED)
        trees = [base.root, *(tree.root for tree in chain)]
        ours, plain = [], []
        for rep in range(args.repeat):
            for name, measure, into in (
                ("ours", ours_steady_push_cpu_s, ours),
                ("rsync", plain_rsync_cpu_s, plain),
            ):
                scratch = work / f"{name}-{rep}"
                scratch.mkdir()
                into.append(measure(trees, scratch))
                shutil.rmtree(scratch)
        ours_ms, plain_ms = 1000 * statistics.median(ours), 1000 * statistics.median(plain)
        print(f"Steady push on one host, local: {args.files} files, {args.size_mb:g} MiB; the last revision "
              f"changed "
              f"{change['changed_files']} files (+{change['added_files']}, -{change['removed_files']}); "
              f"median of {args.repeat}")  # fmt: skip
        print(f"  ours (host script + rsync)  {ours_ms:7.1f} ms CPU   runs: {milliseconds(ours)}")
        print(f"  rsync -a --delete in place  {plain_ms:7.1f} ms CPU   runs: {milliseconds(plain)}")
        extra = ours_ms - plain_ms
        print(f"  the host script adds {extra:.1f} ms per host per push ({ours_ms / plain_ms:.2f}x rsync's)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
