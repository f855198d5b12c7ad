#!/usr/bin/env python3
"""What one ssh connection costs each side, per key exchange algorithm.

    .venv/bin/python bench/ssh_kex_bench.py [--connections 30] [--repeat 3]

A push opens one ssh connection per host (a flip within ControlPersist's
60 s rides it), and every connection starts with a key exchange. The
deploying machine pays its side once per host, so for a fleet of hundreds
it is a figure to know. For each algorithm this machine's ssh client and
sshd both offer, and for the client's default (what `ssh -G` resolves),
`ssh -o KexAlgorithms=<it> host true` is run `--connections` times, one
after another, to one real sshd on 127.0.0.2 (tests/harness/sshd_hosts.py);
the CPU of the client side (this process's children) and of the host side
(the sshd listener's reaped children: each connection's session and shell)
is divided by the connections. Medians of `--repeat` rounds, the
algorithms alternated within each round.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the test harness, imported as the tests do

from harness.sshd_hosts import SSHD, SshdFleet  # noqa: E402 (after the path above)

# The algorithms compared when both sides offer them: the post-quantum
# hybrids OpenSSH made its default (sntrup761x25519 in 9.0, mlkem768x25519
# in 9.9/10.0) and the classical curve25519 they extend.
CANDIDATES = ("mlkem768x25519-sha256", "sntrup761x25519-sha512@openssh.com", "curve25519-sha256")
DEFAULT = "default"


def kex_setting(config_dump: list[str]) -> list[str]:
    """The `kexalgorithms` of `ssh -G` or `sshd -T` output, in order."""
    config = subprocess.run(config_dump, capture_output=True, text=True, check=True).stdout
    line = next(line for line in config.splitlines() if line.startswith("kexalgorithms "))
    return line.split()[1].split(",")


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def reaped_children_cpu_s(pid: int) -> float:
    """CPU of `pid`'s children it has waited for (cutime + cstime of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def milliseconds_per_connection(
    base: list[str], kex: str, connections: int, sshd_pid: int
) -> tuple[float, float]:
    options = [] if kex == DEFAULT else ["-o", f"KexAlgorithms={kex}"]
    client_before, host_before = children_cpu_s(), reaped_children_cpu_s(sshd_pid)
    for _ in range(connections):
        subprocess.run([*base[:-1], *options, base[-1], "true"], check=True, stdin=subprocess.DEVNULL)
    client = children_cpu_s() - client_before
    host = reaped_children_cpu_s(sshd_pid) - host_before
    return 1000 * client / connections, 1000 * host / connections


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=30, help="connections per algorithm per round")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; medians are printed")
    args = parser.parse_args()
    if not (1 <= args.connections <= 1000 and 1 <= args.repeat <= 20):
        sys.exit("ssh_kex_bench: --connections 1..1000 and --repeat 1..20")
    with tempfile.TemporaryDirectory(prefix="ssh-kex-bench-") as work, SshdFleet(1, Path(work)) as fleet:
        host = fleet.hosts[0]
        if host.process is None:
            sys.exit("ssh_kex_bench: the sshd host did not start")
        target = f"root@{host.address}"
        base = [
            "ssh", "-i", str(fleet.identity_file), "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={fleet.known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", "-p", str(host.port), target,
        ]  # fmt: skip
        client_kexes = kex_setting(["ssh", "-G", *base])
        both = set(client_kexes) & set(kex_setting([SSHD, "-T", "-f", "/dev/null"]))
        default = client_kexes[0]
        kexes = [DEFAULT, *(k for k in CANDIDATES if k in both)]
        runs: dict[str, list[tuple[float, float]]] = {k: [] for k in kexes}
        for _ in range(args.repeat):
            for kex in kexes:
                runs[kex].append(milliseconds_per_connection(base, kex, args.connections, host.process.pid))
        print(f"ssh key exchange, CPU per connection (ms), median of {args.repeat} x {args.connections}; "
              f"{subprocess.run(['ssh', '-V'], capture_output=True, text=True).stderr.strip()}")  # fmt: skip
        default_client = statistics.median(c for c, _ in runs[DEFAULT])
        for kex in kexes:
            client = statistics.median(c for c, _ in runs[kex])
            host_side = statistics.median(h for _, h in runs[kex])
            name = f"default ({default})" if kex == DEFAULT else kex
            print(f"  {name:48s} client {client:6.1f}  host {host_side:6.1f}  "
                  f"client / default {client / default_client:5.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
