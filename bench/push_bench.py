#!/usr/bin/env python3
"""Release push benchmark: our fan-out against a serial rsync loop, prsync and clush.

    .venv/bin/python bench/push_bench.py [--hosts 50] [--concurrency 32] [--repeat 3] [--json]

What it does (DESIGN.md section 4, issues 4 and 11):
  * generates a release tree (default 50 MiB, a few thousand files of varied
    sizes, text and binary, deterministic from a seeded RNG; bench/push_trees.py)
    and a chain of SLOTS (5) revisions after it, each a copy of the one before
    with 1% of its bytes changed, spread over files, 3 files added, 3 removed;
  * starts N real sshd hosts on 127.0.0.k (tests/harness/sshd_hosts.py);
  * per tool and repetition: empties the destinations (untimed), pushes the
    base tree ("first push", timed), then warms up (untimed), then pushes the
    last revision ("steady push", timed): the push users meet every day, 1%
    changed from what is live;
      ours    buildbot_steps.release push into a release slot (one ssh session
              per host; rsync in place into the oldest slot, neither live nor
              the rollback target, after the host script has hard-linked what
              changed since that slot's release from the live slot), flipped
              after each push; warm-up: every revision but the last, so that
              each of the 5 slots has held a release and the steady push lands
              in the slot holding the base tree (5 revisions old), as from a
              fleet's 6th deploy on; every push starts on cold ssh connections
              (its own ControlMaster sockets, closed in between); the flip right
              after a timed push, and a flip on cold connections, are timed too;
      serial  one `rsync -a --delete` per host, one after another (run
              --serial-repeat times, default once: it is the slowest);
      prsync  pssh's parallel-rsync -p <concurrency>;
      clush   ClusterShell's copy mode (-f <concurrency>) with rsync as its copy
              tool (clush.conf scp_path/scp_options; its native `scp -r` has no
              delta transfer and no --delete);
      prsync-slots, clush-slots
              the same two tools doing ours' job: every push rsyncs
              (-a --delete) into a fresh directory push-<n> per host, after the
              first with --link-dest=../push-<n-1> (the host's previous copy);
              after each push, a flip through the same tool (parallel-ssh /
              clush: `ln -s push-<n> current.tmp && mv -T current.tmp current`
              per host, on new ssh connections);
      ours-setsid (optional diagnostic) ours with each child in its own session;
    serial, prsync and clush are the peers as they ship: no slots, each pushes
    into a plain directory per host in place (no atomic flip, no rollback);
    the peers warm up with the revision before the last only (their steady
    push depends on nothing older);
  * verifies every copy after every push (untimed);
  * measures each timed push's CPU on the deploying side and on the hosts
    (CpuSplit: two cgroup v1 cpuacct groups; as root): on this machine both
    share its cores, so the wall time bills the hosts' work to the push, where
    on a fleet every host has its own CPU;
  * prints the median of the repetitions, ratios, bytes sent (rsync --stats),
    and references: bytes / the loopback rate of one rsync stream of the tree,
    one `ssh host true` round trip x hosts / concurrency, and a measured
    `parallel-ssh -p <concurrency> true` to every host.

By default (--storage tmpfs) everything lives in a private tmpfs, so that disk
write-back shared with the rest of the machine does not bill the tools. The
harness's sshd sets SHLVL=1, so bash does not source ~/.bashrc for each ssh
command (root's runs `pyenv init` here, ~170 ms of CPU): a tool that runs more
ssh commands per host is not billed for it.

Every ssh connection uses the harness's key and known_hosts with
StrictHostKeyChecking=yes and BatchMode=yes; all traffic is to 127.0.0.0/8.
`--kex ALGORITHM` sets ssh's KexAlgorithms for every tool alike (default:
ssh's own; see bench/ssh_kex_bench.py for what each costs a connection).
Processes are started with argument vectors, never through a local shell.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from push_trees import MIB, Tree, make_chain, make_tree, verify_copy

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the test harness, imported as the tests do

# Ours keeps this many slots (IMVU's five, the runner's default): the
# steady-state push is the (SLOTS + 1)th, into the slot that held the first revision.
SLOTS = 5
# Revisions after the base tree: SLOTS - 1 warm-up pushes, then the timed one.
STEADY_REVISIONS = SLOTS
PHASES = ("first", "steady")  # the timed pushes; "warm" ones are not
TOOLS = ("ours", "serial", "prsync", "clush", "prsync-slots", "clush-slots")
# The peers doing ours' job: a fresh directory per push with --link-dest, then a flip.
SLOT_TOOLS = ("prsync-slots", "clush-slots")
# A diagnostic, not in the default set: ours with every child process in its
# own session (`setsid -w ssh ...`), as pssh starts its children. With the
# kernel's autogroup scheduling, each session is a scheduling group of its own,
# so on a machine shared with other work such children get more of the CPU.
OPTIONAL_TOOLS = ("ours-setsid",)
TOTAL_SENT_RE = re.compile(r"Total bytes sent:\s*([\d,.]+)")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# processes


def run_checked(argv: list[str], **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, **kw)
    if result.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {result.returncode}: {result.stderr.strip()[-2000:]}")
    return result


def total_sent(text: str) -> int:
    return sum(int(re.sub(r"\D", "", m)) for m in TOTAL_SENT_RE.findall(text))


@dataclasses.dataclass
class PushResult:
    seconds: float
    bytes_sent: int | None
    failed_hosts: int
    detail: str = ""


# --------------------------------------------------------------------------
# the fleet and what every client needs


class Env:
    def __init__(self, fleet, workdir: pathlib.Path, concurrency: int, kex: str | None):
        self.fleet = fleet
        self.hosts = fleet.hosts
        self.workdir = workdir
        self.concurrency = concurrency
        self.kex = kex
        self.peer_base = workdir / "peer"
        # One ssh_config for the peers: per-host ports, the harness's key and
        # known_hosts, strict host key checking, no prompts.
        self.ssh_config = workdir / "ssh_config"
        lines = []
        for h in self.hosts:
            lines += [f"Host {h.address}", f"  HostName {h.address}", f"  Port {h.port}", ""]
        lines += [
            "Host *",
            f"  User {fleet.user}",
            f"  IdentityFile {fleet.identity_file}",
            "  IdentitiesOnly yes",
            f"  UserKnownHostsFile {fleet.known_hosts}",
            "  GlobalKnownHostsFile /dev/null",
            "  StrictHostKeyChecking yes",
            "  BatchMode yes",
            *([f"  KexAlgorithms {kex}"] if kex else []),
            "",
        ]
        self.ssh_config.write_text("\n".join(lines))
        for p in (self.ssh_config, fleet.identity_file, fleet.known_hosts, self.peer_base):
            # rsync's -e and --rsync-path are split on spaces by rsync/the remote shell.
            if re.search(r"[\s'\"\\$`]", str(p)):
                raise SystemExit(f"work directory path must not contain spaces or quotes: {p}")
        self.rsh = f"ssh -F {self.ssh_config}"
        # prsync and clush give every host the same remote path. The hosts share
        # one filesystem here, so the remote side picks its own directory from
        # the address it was reached at ($3 of SSH_CONNECTION).
        self.rsync_path = f'set -- $SSH_CONNECTION && cd {self.peer_base}/"$3" && rsync'

        self.push_no = 0  # pushes of the slot peers since the last reset

    def peer_dir(self, host) -> pathlib.Path:
        return self.peer_base / host.address

    def next_slot(self) -> tuple[str, list[str]]:
        """The fresh directory of the next slot push, and its --link-dest (none on the first)."""
        self.push_no += 1
        link = [f"--link-dest=../push-{self.push_no - 1}"] if self.push_no > 1 else []
        return f"push-{self.push_no}", link

    @property
    def slot(self) -> str:
        return f"push-{self.push_no}"

    def flip_command(self, slot: str) -> str:
        """Remote shell command of the slot peers' flip (one argument of their argv)."""
        return (f'set -- $SSH_CONNECTION && cd {self.peer_base}/"$3" && rm -f current.tmp && '
                f"ln -s {slot} current.tmp && mv -T current.tmp current")  # fmt: skip

    def reset_peers(self) -> None:
        self.push_no = 0
        shutil.rmtree(self.peer_base, ignore_errors=True)
        for h in self.hosts:
            self.peer_dir(h).mkdir(parents=True)

    def reset_ours(self) -> None:
        for h in self.hosts:
            for child in h.deploy_root.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()

    def ssh_true_seconds(self, samples: int = 5) -> float:
        times = []
        for h in self.hosts[:samples]:
            t = time.perf_counter()
            run_checked(["ssh", "-F", str(self.ssh_config), h.address, "true"])
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    def parallel_ssh_true_seconds(self, runs: int = 3) -> float | None:
        """`parallel-ssh -p <window> true` to every host: the floor of one command per host."""
        if shutil.which("parallel-ssh") is None:
            return None
        hosts_file = self.workdir / "pssh-hosts"
        hosts_file.write_text("".join(f"{h.address}\n" for h in self.hosts))
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            run_checked(["parallel-ssh", "-h", str(hosts_file), "-p", str(self.concurrency), "-t", "0",
                         "-X", "-F", "-X", str(self.ssh_config), "true"])  # fmt: skip
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    def single_stream_rate(self, tree: Tree) -> tuple[float, int]:
        """Bytes/s of one rsync of the whole tree to one host (best of two)."""
        h = self.hosts[0]
        dest = self.workdir / "bandwidth"
        best, sent = float("inf"), 0
        for _ in range(2):
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir()
            t = time.perf_counter()
            r = run_checked(["rsync", "-a", "--delete", "--stats", "-e", self.rsh,
                             f"{tree.root}/", f"{h.address}:{dest}/"])  # fmt: skip
            best = min(best, time.perf_counter() - t)
            sent = total_sent(r.stdout)
        shutil.rmtree(dest, ignore_errors=True)
        return sent / best, sent


# --------------------------------------------------------------------------
# peers


def push_serial(env: Env, tree: Tree) -> PushResult:
    sent, failed, errors = 0, 0, []
    t = time.perf_counter()
    for h in env.hosts:
        r = subprocess.run(
            [
                "rsync",
                "-a",
                "--delete",
                "--stats",
                "-e",
                env.rsh,
                f"{tree.root}/",
                f"{h.address}:{env.peer_dir(h)}/",
            ],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        if r.returncode != 0:
            failed += 1
            errors.append(f"{h.address}: rc {r.returncode} {r.stderr.strip()[-300:]}")
        sent += total_sent(r.stdout)
    elapsed = time.perf_counter() - t
    return PushResult(elapsed, sent, failed, "; ".join(errors[:3]))


def run_peer(argv: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    """One timed run of a peer tool (its fan-out happens inside)."""
    start = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    return result, time.perf_counter() - start


def peer_result(
    r: subprocess.CompletedProcess, elapsed: float, failed: int, sent: int | None, detail: str
) -> PushResult:
    """A non-zero exit counts at least one failed host, with the tool's words."""
    if r.returncode == 0:
        return PushResult(elapsed, sent, failed)
    return PushResult(elapsed, sent, max(failed, 1), f"rc {r.returncode}: {detail}")


def clush_base(env: Env, conf: pathlib.Path, mode: str) -> list[str]:
    """clush on every host at the window, failures in its exit code (-S)."""
    return ["clush", "--conf", str(conf), "-S", mode,
            "-w", ",".join(h.address for h in env.hosts), "-f", str(env.concurrency)]  # fmt: skip


def clush_failures(r: subprocess.CompletedProcess) -> int:
    return len(re.findall(r"exited with exit code", r.stderr))


def push_prsync(env: Env, tree: Tree, slots: bool = False) -> PushResult:
    run_dir = pathlib.Path(tempfile.mkdtemp(prefix="prsync-", dir=env.workdir))
    hosts_file = run_dir / "hosts"
    hosts_file.write_text("".join(f"{h.address}\n" for h in env.hosts))
    dest, link = env.next_slot() if slots else (".", [])
    argv = [
        "parallel-rsync", "-h", str(hosts_file), "-p", str(env.concurrency), "-t", "0",
        "-o", str(run_dir / "out"), "-e", str(run_dir / "err"),
        "-a", "-S", f"-F {env.ssh_config}",
        "-X", "--delete", "-X", "--stats", "-X", f"--rsync-path={env.rsync_path}",
        *[x for opt in link for x in ("-X", opt)],
        f"{tree.root}/", dest,
    ]  # fmt: skip
    r, elapsed = run_peer(argv)
    sent = sum(total_sent(p.read_text()) for p in (run_dir / "out").iterdir())
    errs = [p.read_text().strip()[-300:] for p in (run_dir / "err").iterdir() if p.stat().st_size]
    shutil.rmtree(run_dir)
    return peer_result(
        r, elapsed, r.stdout.count("[FAILURE]"), sent, f"{r.stdout.strip()[-300:]} {' | '.join(errs[:2])}"
    )


def clush_conf(env: Env) -> pathlib.Path:
    conf = env.workdir / "clush.conf"
    # connect_timeout 0: clush would append -oConnectTimeout=N to the copy
    # tool's arguments, which is an ssh option, not an rsync one.
    conf.write_text("[Main]\nfanout: 64\nconnect_timeout: 0\ncommand_timeout: 0\ncolor: never\n"
                    "maxrc: yes\nnode_count: yes\nverbosity: 1\n")  # fmt: skip
    return conf


def push_clush(env: Env, tree: Tree, slots: bool = False) -> PushResult:
    conf = clush_conf(env)
    dest, link = env.next_slot() if slots else (".", [])
    copy_options = shlex.join(
        ["-a", "--delete", "--stats", "-e", env.rsh, f"--rsync-path={env.rsync_path}", *link]
    )
    argv = [
        *clush_base(env, conf, "-n"),
        "-O", "scp_path=rsync", "-O", f"scp_options={copy_options}",
        "--copy", f"{tree.root}/", "--dest", dest,
    ]  # fmt: skip
    r, elapsed = run_peer(argv)
    return peer_result(r, elapsed, clush_failures(r), total_sent(r.stdout), r.stderr.strip()[-400:])


def flip_pssh(env: Env, slot: str) -> PushResult:
    """The prsync-slots flip: `parallel-ssh -p <window>` of the flip command (new connections)."""
    hosts_file = env.workdir / "pssh-hosts"
    hosts_file.write_text("".join(f"{h.address}\n" for h in env.hosts))
    argv = ["parallel-ssh", "-h", str(hosts_file), "-p", str(env.concurrency), "-t", "0",
            "-X", "-F", "-X", str(env.ssh_config), env.flip_command(slot)]  # fmt: skip
    r, elapsed = run_peer(argv)
    return peer_result(
        r, elapsed, r.stdout.count("[FAILURE]"), None, f"{r.stdout.strip()[-300:]} {r.stderr.strip()[-300:]}"
    )


def flip_clush(env: Env, slot: str) -> PushResult:
    """The clush-slots flip: clush -f <window> of the flip command (new connections)."""
    argv = [
        *clush_base(env, clush_conf(env), "-q"),
        "-O",
        f"ssh_options=-F {env.ssh_config}",
        env.flip_command(slot),
    ]
    r, elapsed = run_peer(argv)
    return peer_result(r, elapsed, clush_failures(r), None, r.stderr.strip()[-400:])


PEERS = {
    "serial": push_serial, "prsync": push_prsync, "clush": push_clush,
    "prsync-slots": lambda env, tree: push_prsync(env, tree, slots=True),
    "clush-slots": lambda env, tree: push_clush(env, tree, slots=True),
}  # fmt: skip
PEER_FLIPS = {"prsync-slots": flip_pssh, "clush-slots": flip_clush}


# --------------------------------------------------------------------------
# where the CPU goes: the deploying side and the hosts


class CpuSplit:
    """CPU time of the deploying side (this process and everything it starts:
    our fan-out, the peers, their ssh clients, ControlMasters and sending
    rsyncs) and of the hosts (the sshd listeners and every session they fork),
    from two cgroup v1 cpuacct groups. On this machine both share its cores,
    so a push's wall time bills the hosts' work as if the deploy host did it;
    on a fleet each host has its own CPU and the deploy side is what is shared.
    Unavailable (None figures) without a writable /sys/fs/cgroup/cpuacct."""

    ROOT = pathlib.Path("/sys/fs/cgroup/cpuacct")

    def __init__(self) -> None:
        self.groups: dict[str, pathlib.Path] = {}
        try:
            for side in ("deploy", "hosts"):
                group = self.ROOT / f"push-bench-{os.getpid()}-{side}"
                group.mkdir()
                self.groups[side] = group
            (self.groups["deploy"] / "cgroup.procs").write_text(str(os.getpid()))
        except OSError as exc:
            log(f"CPU split unavailable ({exc}): CPU columns left empty")
            self.close()

    def add_hosts(self, pids: list[int]) -> None:
        if "hosts" in self.groups:
            for pid in pids:
                (self.groups["hosts"] / "cgroup.procs").write_text(str(pid))

    def read(self) -> dict[str, float] | None:
        """Seconds of CPU used so far by each side."""
        if len(self.groups) != 2:
            return None
        return {side: int((group / "cpuacct.usage").read_text()) / 1e9 for side, group in self.groups.items()}

    @staticmethod
    def spent(before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, float] | None:
        if before is None or after is None:
            return None
        return {side: after[side] - before[side] for side in before}

    def close(self) -> None:
        """Every process back in the root group (the hosts are stopped by then), the groups removed."""
        for group in self.groups.values():
            try:
                for pid in (group / "cgroup.procs").read_text().split():
                    (self.ROOT / "cgroup.procs").write_text(pid)
                group.rmdir()
            except OSError as exc:
                log(f"could not remove {group}: {exc}")
        self.groups = {}


# --------------------------------------------------------------------------
# ours


class Ours:
    """buildbot_steps.release through its Python API, on the C++ engine (_core.Fanout)."""

    def __init__(self, env: Env, setsid: bool = False):
        from buildbot_steps import _core, release  # noqa: PLC0415 (needs `make install`)

        if not hasattr(_core, "Fanout"):
            raise RuntimeError("buildbot_steps._core has no Fanout: run `make install`")
        self.release = release
        self.env = env
        self.inventory = release.Inventory.from_entries(env.fleet.inventory_entries(), "bench inventory")
        self.settings = release.FanoutSettings(concurrency=env.concurrency)
        self.transport = None
        self.runner = None
        self.revision = None
        self.pushed_ok: list[str] = []
        self.transport_class = release.SshTransport
        if setsid:

            class SetsidSshTransport(release.SshTransport):
                def script_command(self, host, action, args):
                    spec = super().script_command(host, action, args)
                    return dataclasses.replace(spec, argv=["setsid", "-w", *spec.argv])

                def push_steps(self, host, source, entry_list, transfer_args):
                    steps = super().push_steps(host, source, entry_list, transfer_args)
                    return [(name, dataclasses.replace(spec, argv=["setsid", "-w", *spec.argv]))
                            for name, spec in steps]  # fmt: skip

            self.transport_class = SetsidSshTransport

    def start_cold(self) -> None:
        """A new runner and ssh transport: no ControlMaster connection survives."""
        self.close()
        # Our own socket directory (short: unix socket paths stay under ~100
        # bytes), so close() can end exactly these masters.
        self.transport = self.transport_class(
            extra_options=(f"KexAlgorithms={self.env.kex}",) if self.env.kex else (),
            known_hosts=str(self.env.fleet.known_hosts),
            identity_file=str(self.env.fleet.identity_file),
            control_dir=tempfile.mkdtemp(prefix="pb-cm-", dir="/tmp"),
        )
        self.runner = self.release.ReleaseRunner(self.inventory, self.transport, self.settings, SLOTS)

    @staticmethod
    def _detail(report) -> str:
        bad = [h for h in report.hosts if not h.ok]
        return "; ".join(
            f"{h.host}: {h.status} step {h.failed_step} rc {h.exit_code}: {h.error}" for h in bad[:3]
        )

    def push(self, tree: Tree, revision: str) -> PushResult:
        t = time.perf_counter()
        report = self.runner.push(str(tree.root), revision=revision, build="bench")
        elapsed = time.perf_counter() - t
        self.revision, self.pushed_ok = revision, report.ok_hosts
        return PushResult(elapsed, report.bytes_sent, len(report.failed_hosts), self._detail(report))

    def flip(self, revision: str | None = None) -> PushResult:
        t = time.perf_counter()
        report = self.runner.flip(revision or self.revision, only_hosts=self.pushed_ok)
        elapsed = time.perf_counter() - t
        failed = len(report.failed_hosts) + len(self.inventory.hosts) - len(report.hosts)
        return PushResult(elapsed, None, failed, self._detail(report))

    def live_dirs(self) -> list[pathlib.Path]:
        return [pathlib.Path(os.path.realpath(h.deploy_root / "current")) for h in self.env.hosts]

    def hardlinked_share(self) -> float:
        """Share of the live slot's files on the first host that are hard links into another release."""
        return hardlinked_share(self.live_dirs()[0])

    def close(self) -> None:
        """End the ControlMaster connections of the current transport (untimed)."""
        transport, self.transport = self.transport, None
        if transport is None or transport.control_dir is None:
            return
        for host in self.inventory.hosts:
            subprocess.run(["ssh", *transport.ssh_options(host), "-O", "exit", f"{host.user}@{host.address}"],
                           capture_output=True, stdin=subprocess.DEVNULL)  # fmt: skip
        shutil.rmtree(transport.control_dir, ignore_errors=True)


def hardlinked_share(root: pathlib.Path) -> float:
    """Share of the files under `root` (our manifest aside) that are hard links into another release."""
    files = linked = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            if name != ".release":
                files += 1
                linked += st.st_nlink > 1
    return linked / files if files else 0.0


# --------------------------------------------------------------------------
# the run


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def fmt_s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def fmt_bytes(x: float | None) -> str:
    if x is None:
        return "-"
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if x >= div:
            return f"{x / div:.1f} {unit}"
    return f"{int(x)} B"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=50, help="loopback sshd hosts (default 50)")
    ap.add_argument(
        "--concurrency",
        type=int,
        default=32,
        help="fan-out window of every parallel tool (default 32, pssh's)",
    )
    ap.add_argument("--repeat", type=int, default=3, help="repetitions; medians are reported (default 3)")
    ap.add_argument(
        "--serial-repeat",
        type=int,
        default=1,
        help="repetitions of the serial loop, the slowest and steadiest tool (default 1: keeps the "
        "default run to a few minutes)",
    )
    ap.add_argument("--size-mb", type=float, default=50, help="release tree size in MiB (default 50)")
    ap.add_argument("--files", type=int, default=3000, help="files in the tree (default 3000)")
    ap.add_argument(
        "--change-percent", type=float, default=1.0, help="share of bytes changed in tree 2 (default 1)"
    )
    ap.add_argument("--seed", type=int, default=20261126)
    ap.add_argument(
        "--tools",
        default=",".join(TOOLS),
        help=f"comma-separated, from {','.join(TOOLS + OPTIONAL_TOOLS)} (default: {','.join(TOOLS)})",
    )
    ap.add_argument(
        "--workdir",
        type=pathlib.Path,
        help="run in this directory instead of a temporary one "
        "(with --storage tmpfs, a tmpfs is mounted over it for the run)",
    )
    ap.add_argument(
        "--kex",
        help="ssh KexAlgorithms for every tool, e.g. curve25519-sha256 (default: ssh's own; "
        "bench/ssh_kex_bench.py says what each costs)",
    )
    ap.add_argument("--json", action="store_true", help="print a JSON document instead of the table")
    ap.add_argument("--json-file", type=pathlib.Path, help="also write the JSON document to this file")
    ap.add_argument(
        "--storage",
        choices=("tmpfs", "disk"),
        default="tmpfs",
        help="tmpfs (default, needs root): trees, hosts and destinations in a private tmpfs, so the "
        "disk's write-back (shared with everything else on the machine) does not bill the tools; "
        "disk: a directory on disk, with sync(2) between timed steps",
    )
    args = ap.parse_args(argv)
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    if unknown := set(tools) - set(TOOLS) - set(OPTIONAL_TOOLS):
        ap.error(f"unknown tools: {sorted(unknown)}")
    if args.concurrency < 1 or args.repeat < 1 or args.hosts < 1:
        ap.error("--hosts, --concurrency and --repeat must be at least 1")
    needed = {"rsync", "ssh"}
    if {"prsync", "prsync-slots"} & set(tools):
        needed.add("parallel-rsync")
    if "prsync-slots" in tools:
        needed.add("parallel-ssh")
    if {"clush", "clush-slots"} & set(tools):
        needed.add("clush")
    for exe in sorted(needed):
        if shutil.which(exe) is None:
            ap.error(f"{exe} not found (apt-get install -y rsync pssh clustershell)")

    from harness import sshd_hosts  # noqa: PLC0415

    started = time.perf_counter()
    load_start = os.getloadavg()
    tmp = None
    if args.workdir:
        workdir = args.workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="push-bench-")
        workdir = pathlib.Path(tmp.name)
    mounted = False
    if args.storage == "tmpfs":
        if os.geteuid() != 0:
            ap.error("--storage tmpfs needs root (mount); use --storage disk")
        size_mib = int(args.hosts * args.size_mb * 3 + 1024)
        run_checked(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0700", "tmpfs", str(workdir)])
        mounted = True

    def settle() -> None:
        """Untimed, between steps: write-back of one push does not bill the next."""
        if args.storage == "disk":
            os.sync()

    report: dict = {
        "config": {
            "hosts": args.hosts,
            "concurrency": args.concurrency,
            "repeat": args.repeat,
            "serial_repeat": args.serial_repeat,
            "size_mib": args.size_mb,
            "files": args.files,
            "change_percent": args.change_percent,
            "seed": args.seed,
            "tools": tools,
            "storage": args.storage,
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "sched_autogroup": autogroup_setting(),
            "rsync": subprocess.run(["rsync", "--version"], capture_output=True, text=True).stdout.split(
                "\n"
            )[0],
            "ssh": subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip(),
            "kex": args.kex or "ssh's default",
        },
    }
    ours_by_tool: dict[str, Ours] = {}
    fleet = None
    cpu = None
    try:
        t = time.perf_counter()
        v1 = make_tree(workdir / "tree1", int(args.size_mb * MIB), args.files, args.seed)
        chain, change = make_chain(v1, workdir, STEADY_REVISIONS, args.change_percent / 100, args.seed)
        report["tree"] = {"bytes": v1.total_bytes, "files": len(v1.sizes), "revisions": len(chain), **change}
        log(
            f"trees: {len(v1.sizes)} files, {fmt_bytes(v1.total_bytes)}; {len(chain)} revisions, the "
            "last changes "
            f"{fmt_bytes(change['changed_bytes'])} in {change['changed_files']} files "
            f"(+{change['added_files']} added, -{change['removed_files']} removed) "
            f"[{time.perf_counter() - t:.1f}s]"
        )

        t = time.perf_counter()
        cpu = CpuSplit()
        fleet = sshd_hosts.SshdFleet(args.hosts, workdir / "fleet")
        fleet.start()
        cpu.add_hosts([host.process.pid for host in fleet.hosts if host.process is not None])
        env = Env(fleet, workdir, args.concurrency, args.kex)
        log(
            f"{args.hosts} sshd hosts up on 127.0.0.{sshd_hosts.FIRST_HOST_OCTET}.. "
            f"[{time.perf_counter() - t:.1f}s]"
        )

        rtt = env.ssh_true_seconds()
        pssh_true = env.parallel_ssh_true_seconds()
        rate, single_sent = env.single_stream_rate(v1)
        report["reference"] = {
            "ssh_true_s": rtt,
            "parallel_ssh_true_s": pssh_true,
            "ssh_true_x_hosts_over_concurrency_s": rtt * args.hosts / args.concurrency,
            "single_stream_bytes_per_s": rate,
            "single_stream_bytes_sent": single_sent,
        }
        log(
            f"ssh true: {rtt * 1000:.0f} ms; parallel-ssh true to all: {fmt_s(pssh_true)} s; one rsync "
            f"stream: {rate / MIB:.0f} MiB/s ({fmt_bytes(single_sent)} sent)"
        )

        samples: dict[str, dict[str, list]] = {
            tool: {
                "first_s": [],
                "steady_s": [],
                "first_bytes": [],
                "steady_bytes": [],
                "flip_s": [],
                "flip_cold_s": [],
                "first_cpu": [],
                "steady_cpu": [],
            }
            for tool in tools
        }
        errors: list[str] = []

        def record(error: str) -> None:
            errors.append(error)
            log(error)

        for tool in [t for t in tools if t.startswith("ours")]:
            try:
                ours_by_tool[tool] = Ours(env, setsid=tool == "ours-setsid")
            except Exception as exc:  # noqa: BLE001 (reported, the peers still run)
                record(f"{tool}: not run: {type(exc).__name__}: {exc}")
                tools.remove(tool)
                del samples[tool]
        for rep in range(args.repeat):
            order = tools[rep % len(tools) :] + tools[: rep % len(tools)]
            for tool in order:
                if tool == "serial" and rep >= args.serial_repeat:
                    continue
                s = samples[tool]
                # Both emptied before every tool: only one tool's copies exist at a time.
                env.reset_ours()
                env.reset_peers()
                settle()
                ours = ours_by_tool.get(tool)
                for phase, n, tree in push_sequence(tool, v1, chain):
                    timed = phase in PHASES
                    if ours is not None:
                        # Cold ssh, like the peers: a real next push comes long
                        # after ControlPersist has closed the last one's masters.
                        ours.start_cold()
                        cpu_before = cpu.read()
                        res = ours.push(tree, revision=f"r{rep}-{n}")
                    else:
                        cpu_before = cpu.read()
                        res = PEERS[tool](env, tree)
                    cpu_spent = CpuSplit.spent(cpu_before, cpu.read())
                    settle()
                    if res.failed_hosts:
                        record(f"{tool} rep {rep} {phase} {n}: {res.failed_hosts} hosts failed: {res.detail}")
                    if timed:
                        s[f"{phase}_s"].append(res.seconds)
                        s[f"{phase}_bytes"].append(res.bytes_sent)
                        if cpu_spent is not None:
                            s[f"{phase}_cpu"].append(cpu_spent)
                    extra = ""
                    if ours is not None:
                        flip = ours.flip()
                        if flip.failed_hosts:
                            record(
                                f"{tool} rep {rep} flip after {phase} {n}: {flip.failed_hosts} failed: "
                                f"{flip.detail}"
                            )
                        if timed:
                            s["flip_s"].append(flip.seconds)
                        extra = f", flip {flip.seconds:.2f}s"
                        dests = ours.live_dirs()
                        if phase == "steady":
                            if tool == "ours":
                                report["ours_hardlinked_share"] = ours.hardlinked_share()
                            # And a flip on cold connections (back to the revision
                            # before: the rollback target, still complete in its slot).
                            ours.start_cold()
                            cold = ours.flip(f"r{rep}-{n - 1}")
                            if cold.failed_hosts:
                                record(
                                    f"{tool} rep {rep} cold flip: {cold.failed_hosts} failed: {cold.detail}"
                                )
                            s["flip_cold_s"].append(cold.seconds)
                            extra += f", cold flip {cold.seconds:.2f}s"
                    elif tool in PEER_FLIPS:
                        slot = env.slot
                        dests = [env.peer_dir(h) / slot for h in env.hosts]
                        flip = PEER_FLIPS[tool](env, slot)
                        if flip.failed_hosts:
                            record(
                                f"{tool} rep {rep} flip after {phase} {n}: {flip.failed_hosts} failed: "
                                f"{flip.detail}"
                            )
                        # The peers' flip always opens new ssh connections: compared with ours' cold flip.
                        if timed:
                            s["flip_cold_s"].append(flip.seconds)
                        extra = f", flip (new connections) {flip.seconds:.2f}s"
                        unflipped = [
                            h.address for h in env.hosts if link_target(env.peer_dir(h) / "current") != slot
                        ]
                        if unflipped:
                            record(
                                f"{tool} rep {rep} flip after {phase}: current is not {slot} on "
                                f"{len(unflipped)} hosts, e.g. {unflipped[0]}"
                            )
                        if phase == "steady":
                            report.setdefault("slots_hardlinked_share", {})[tool] = hardlinked_share(dests[0])
                    else:
                        dests = [env.peer_dir(h) for h in env.hosts]
                    bad = [msg for d in dests if (msg := verify_copy(d, tree))]
                    if bad:
                        record(f"{tool} rep {rep} {phase} {n}: {len(bad)} hosts hold a wrong copy: {bad[0]}")
                    log(f"rep {rep + 1}/{args.repeat} {tool:11s} {phase:6s} {n} push {res.seconds:6.2f}s "
                        f"sent {fmt_bytes(res.bytes_sent)}{extra}")  # fmt: skip
    finally:
        for ours in ours_by_tool.values():
            ours.close()
        if fleet is not None:
            fleet.stop()
        if cpu is not None:
            cpu.close()
        if mounted and subprocess.run(["umount", str(workdir)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(workdir)], capture_output=True)
        if tmp is not None:
            tmp.cleanup()

    # -- summary -----------------------------------------------------------
    results = {}
    for tool, s in samples.items():
        first, steady = median(s["first_s"]), median(s["steady_s"])
        fb = [b for b in s["first_bytes"] if b is not None]
        sb = [b for b in s["steady_bytes"] if b is not None]
        results[tool] = {
            "first_s": first, "steady_s": steady,
            "steady_over_first": steady / first if first and steady is not None else None,
            "first_bytes_sent": median(fb), "steady_bytes_sent": median(sb),
            "flip_s": median(s["flip_s"]),
            "flip_cold_s": median(s["flip_cold_s"]),
            **{f"{phase}_cpu_{side}_s": median([c[side] for c in s[f"{phase}_cpu"]])
               for phase in PHASES for side in ("deploy", "hosts")},
            "samples": s,
        }  # fmt: skip
    if "ours" in results:
        o = results["ours"]
        for r in results.values():
            r["ours_over_first"] = o["first_s"] / r["first_s"] if r["first_s"] else None
            r["ours_over_steady"] = o["steady_s"] / r["steady_s"] if r["steady_s"] else None
            r["ours_over_flip_cold"] = (
                o["flip_cold_s"] / r["flip_cold_s"]
                if r["flip_cold_s"] and o["flip_cold_s"] is not None
                else None
            )
    ref = report["reference"]
    rate = ref["single_stream_bytes_per_s"]
    bound_first = args.hosts * ref["single_stream_bytes_sent"] / rate
    bound_steady = None
    if "ours" in results and results["ours"]["steady_bytes_sent"]:
        bound_steady = results["ours"]["steady_bytes_sent"] / rate
    ref["bytes_over_single_stream_rate_first_s"] = bound_first
    ref["bytes_over_single_stream_rate_steady_s"] = bound_steady
    report["results"] = results
    report["errors"] = errors
    report["total_runtime_s"] = time.perf_counter() - started
    report["loadavg_1m_start_end"] = [load_start[0], os.getloadavg()[0]]

    if args.json_file:
        args.json_file.write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        print_table(report, args)
    return 1 if errors else 0


def push_sequence(tool: str, base: Tree, chain: list[Tree]) -> list[tuple[str, int, Tree]]:
    """(phase, revision number, tree) of every push of one run of `tool`.

    Ours pushes every revision, so that each slot has held a release before the
    timed steady push, which lands in the slot of the oldest one (the state a
    fleet is in from its (SLOTS + 1)th deploy on). The peers only need the
    revision before the timed one: in place or in a fresh directory, their
    steady push depends on nothing older.
    """
    last = len(chain)
    warm = range(1, last) if tool.startswith("ours") else range(last - 1, last)
    return [("first", 0, base), *(("warm", n, chain[n - 1]) for n in warm), ("steady", last, chain[-1])]


# Issue 11's goals: (label, numerator tool, its phase, denominator tool, its phase, at most).
GOALS = (
    ("ours steady / prsync steady (in place)", "ours", "steady", "prsync", "steady", 1.15),
    ("ours steady / ours first", "ours", "steady", "ours", "first", 0.25),
    # A first push is a full copy into an empty directory: the same job in place or in a slot.
    ("ours first / clush first (its copy mode)", "ours", "first", "clush", "first", 1.0),
)


def print_goals(results: dict) -> None:
    for label, num, num_phase, den, den_phase, limit in GOALS:
        if num not in results or den not in results:
            continue
        a, b = results[num][f"{num_phase}_s"], results[den][f"{den_phase}_s"]
        if a is None or not b:
            continue
        verdict = "met" if a / b <= limit else "NOT met"
        print(f"Goal {label}: {a:.2f} / {b:.2f} s = {a / b:.2f} (at most {limit}): {verdict}")


def print_cpu_split(results: dict, hosts: int) -> None:
    """CPU seconds per push on each side (CpuSplit), and ours over each tool's deploy side."""
    ours = results.get("ours", {})
    rows = [(tool, r) for tool, r in results.items() if r.get("steady_cpu_deploy_s") is not None]
    if not rows:
        return
    print()
    print("CPU per push, median (s): deploy side = the pushing tool with its ssh clients and sending "
          f"rsyncs; hosts = every sshd session, over {hosts} hosts")  # fmt: skip
    print(f"  {'tool':<14}{'1st deploy':>11}{'1st hosts':>11}{'steady deploy':>15}{'steady hosts':>14}"
          f"{'ours/tool steady deploy':>25}")  # fmt: skip
    for tool, r in rows:
        ratio = ""
        if tool != "ours" and ours.get("steady_cpu_deploy_s") and r["steady_cpu_deploy_s"]:
            ratio = f"{ours['steady_cpu_deploy_s'] / r['steady_cpu_deploy_s']:.2f}"
        print(f"  {tool:<14}{r['first_cpu_deploy_s']:>11.2f}{r['first_cpu_hosts_s']:>11.2f}"
              f"{r['steady_cpu_deploy_s']:>15.2f}{r['steady_cpu_hosts_s']:>14.2f}{ratio:>25}")  # fmt: skip


def link_target(path: pathlib.Path) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def autogroup_setting() -> str:
    try:
        return pathlib.Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip()
    except OSError:
        return "unknown"


def print_table(report: dict, args) -> None:
    cfg, tree, ref, results = report["config"], report["tree"], report["reference"], report["results"]
    print(f"Release push: {cfg['hosts']} loopback sshd hosts, concurrency {cfg['concurrency']}, "
          f"median of {cfg['repeat']}, {cfg['cpus']} CPUs, storage {cfg['storage']}; "
          f"{cfg['rsync']}; {cfg['ssh']}, key exchange: {cfg['kex']}")  # fmt: skip
    print(
        f"Tree: {tree['files']} files, {fmt_bytes(tree['bytes'])}; {tree['revisions']} revisions after it, "
        f"each 1 push apart; the steady push's revision: "
        f"{fmt_bytes(tree['changed_bytes'])} "
        f"({tree['changed_bytes'] / tree['bytes'] * 100:.2f}%) changed in {tree['changed_files']} files, "
        f"+{tree['added_files']} files, -{tree['removed_files']} files"
    )
    print()
    head = (
        "tool",
        "job",
        "window",
        "runs",
        "first s",
        "steady s",
        "steady/1st",
        "ours/tool 1st",
        "ours/tool steady",
        "flip s",
        "cold flip s",
        "ours/tool cold flip",
        "sent 1st",
        "sent steady",
    )
    rows = []
    for tool, r in results.items():
        window = "1" if tool == "serial" else str(cfg["concurrency"])
        job = "slots" if tool.startswith("ours") or tool in SLOT_TOOLS else "in place"
        rows.append(
            (
                tool,
                job,
                window,
                str(len(r["samples"]["first_s"])),
                fmt_s(r["first_s"]),
                fmt_s(r["steady_s"]),
                fmt_ratio(r["steady_over_first"]),
                fmt_ratio(r.get("ours_over_first")) if tool != "ours" else "",
                fmt_ratio(r.get("ours_over_steady")) if tool != "ours" else "",
                fmt_s(r["flip_s"]) if r["flip_s"] is not None else "",
                fmt_s(r["flip_cold_s"]) if r["flip_cold_s"] is not None else "",
                fmt_ratio(r.get("ours_over_flip_cold"))
                if tool != "ours" and r["flip_cold_s"] is not None
                else "",
                fmt_bytes(r["first_bytes_sent"]),
                fmt_bytes(r["steady_bytes_sent"]),
            )
        )

    def reference_row(label: str, **cells: str) -> tuple[str, ...]:
        """A row of lower bounds: `cells` maps column names (spaces as _) to values."""
        return (label, *(cells.get(name.replace(" ", "_").replace("/", "_"), "") for name in head[1:]))

    rows.append(
        reference_row(
            "ref: bytes / 1-stream rate",
            first_s=fmt_s(ref["bytes_over_single_stream_rate_first_s"]),
            steady_s=fmt_s(ref["bytes_over_single_stream_rate_steady_s"]),
        )
    )
    rtt_ref = fmt_s(ref["ssh_true_x_hosts_over_concurrency_s"])
    rows.append(
        reference_row(
            f"ref: ssh true x {cfg['hosts']}/{cfg['concurrency']}",
            first_s=rtt_ref,
            steady_s=rtt_ref,
            cold_flip_s=rtt_ref,
        )
    )
    if ref.get("parallel_ssh_true_s") is not None:
        p = fmt_s(ref["parallel_ssh_true_s"])
        rows.append(
            reference_row(
                f"ref: parallel-ssh -p {cfg['concurrency']} true", first_s=p, steady_s=p, cold_flip_s=p
            )
        )
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    for row in (head, *rows):
        print(
            "  ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(row, widths)))
        )
    print()
    print(
        "ours/tool: our time divided by the tool's (below 1: ours is faster). steady/1st: the steady "
        "push over the first. "
        "Times are medians over the runs."
    )
    print(
        "Job 'slots' (ours, prsync-slots, clush-slots): every push builds a complete new copy "
        "in a separate directory per host (ours: in place into its oldest slot; the slot peers: a "
        "fresh, previously non-existent directory) (rsync -a --delete; after the first push with "
        "--link-dest "
        "against the host's previous copy, so unchanged files become hard links), and a separate, timed flip "
        "then points `current` at it atomically (a new symlink renamed over `current`); the previous "
        "copy stays "
        "intact for rollback. prsync-slots/clush-slots push into <host dir>/push-<n> with "
        "--link-dest=../push-<n-1> and flip with `rm -f current.tmp && ln -s push-<n> current.tmp && mv -T "
        "current.tmp current` run on every host by parallel-ssh -p <window> / clush -f <window> (one new ssh "
        "connection per host). Job 'in place' (serial, prsync, clush: the peers as they ship): every "
        "push rsyncs over the copy of the push before in place, so there is no atomic flip "
        "and no rollback; they have no "
        "flip time."
    )
    print(
        "flip s: ours' flip right after each push, over the push's still-open ssh ControlMaster connections. "
        "cold flip s: a flip on new ssh connections: ours' rollback flip to the revision before on a fresh "
        "transport (once per run), and the slot peers' flip after each push (they keep no connections). "
        "ours/tool cold flip compares these two."
    )
    if "ours-setsid" in results:
        print(
            "ours-setsid (diagnostic): ours with each child started in its own session (`setsid -w "
            "ssh|rsync ...`), "
            "as pssh starts its children; with autogroup scheduling "
            "(/proc/sys/kernel/sched_autogroup_enabled="
            f"{autogroup_setting()}) every session is a CPU-scheduling group of its own, which matters "
            "when other "
            "work shares the machine."
        )
    o = results.get("ours")
    if o and o["flip_s"] is not None:
        cold = f"{o['flip_cold_s']:.2f} s on cold connections" if o.get("flip_cold_s") is not None else ""
        print(
            f"Flip of all {cfg['hosts']} hosts (ours): {o['flip_s']:.2f} s right after a push (its ssh "
            f"ControlMaster connections still open); {cold}. Reference: one `ssh host true` "
            f"{ref['ssh_true_s'] * 1000:.0f} ms x {cfg['hosts']}/{cfg['concurrency']} = "
            f"{ref['ssh_true_x_hosts_over_concurrency_s']:.2f} s; measured: `parallel-ssh -p "
            f"{cfg['concurrency']} true` "
            f"to all hosts {fmt_s(ref.get('parallel_ssh_true_s'))} s"
        )
    d = results.get("ours-setsid")
    if d and d["flip_s"] is not None:
        print(f"Flip of all {cfg['hosts']} hosts (ours-setsid): {d['flip_s']:.2f} s right after a push; "
              f"{fmt_s(d.get('flip_cold_s'))} s on cold connections")  # fmt: skip
    if report.get("ours_hardlinked_share") is not None:
        print(
            f"Ours, steady push: {report['ours_hardlinked_share'] * 100:.1f}% of the new slot's files "
            "(first host) "
            "are hard links into the live slot"
        )
    for tool, share in report.get("slots_hardlinked_share", {}).items():
        print(
            f"{tool}, steady push: {share * 100:.1f}% of its files (first host) "
            "are hard links into the copy before (--link-dest)"
        )
    print(
        "ref: bytes / 1-stream rate = bytes sent (first push: the tree to every host; "
        "steady: what ours sent) / the rate of one rsync of the tree to one host "
        f"({ref['single_stream_bytes_per_s'] / MIB:.0f} MiB/s, connection included); "
        f"parallel streams on {cfg['cpus']} CPUs can beat it somewhat: a reference, not a "
        "hard floor. ref: ssh true = one connection per host at the given window, the floor "
        "of any ssh fan-out."
    )
    print(
        "Setup: ours pushes into release slots (one ssh session per host: the receiving "
        "rsync runs through the host script, which under the deploy root's lock rsyncs in "
        "place into the oldest slot, neither live nor the rollback target, after hard-linking "
        "what changed since that slot's release from the live slot, sets modes and commits), "
        "starting every push on cold ssh "
        "connections, and flips "
        "after each push (not in the push time). The in-place peers rsync (-a --delete) into "
        "a plain directory per host, each push over the copy of the push before; the slot peers "
        "as described above. All prsync/clush rows reach a per-host directory via "
        "--rsync-path 'cd .../$ADDR && rsync' (the flip command does the same cd). The "
        "hosts' sshd sets SHLVL=1 (tests/harness/sshd_hosts.py), so no ssh command sources "
        "root's ~/.bashrc. clush runs in copy mode with rsync as its copy tool (its native "
        "scp -r has no delta and no --delete). 'sent' is rsync's Total bytes sent summed "
        "over hosts. Every copy is verified after every push (untimed)."
    )
    print_cpu_split(results, cfg["hosts"])
    print_goals(results)
    la = report["loadavg_1m_start_end"]
    print(
        f"Total benchmark runtime: {report['total_runtime_s']:.0f} s; 1-minute load average {la[0]:.1f} "
        "at the "
        f"start, {la[1]:.1f} at the end (on a shared machine, other work competes for the {cfg['cpus']} CPUs)"
    )
    for e in report["errors"]:
        print(f"ERROR: {e}")


if __name__ == "__main__":
    sys.exit(main())
