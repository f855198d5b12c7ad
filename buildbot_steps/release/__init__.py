"""Engine 2, the release push: parallel rsync fan-out into release slots, atomic flip, rollback.

inventory.py      hosts, the inventory file, selections, and the checks on every value
transports.py     ssh (the real one) and local paths: argument vectors for each host
runner.py         ReleaseRunner (push, flip, rollback, status) over the core's Fanout
reports.py        HostReport, RunReport, and the words of refusals and failures
steps.py          PushRelease, FlipRelease, RollbackRelease for master.cfg
cli.py            `buildbot-cd push | flip | rollback | status`
host_release.sh   the fixed script each host runs, first part: checks, lock, manifest,
                  slots, flip, rollback, status, and `main` (the action dispatch)
host_transfer.sh  its second part: a push's transfer into a slot (link from the live
                  release, rsync, mode pass, commit); transports.host_script_text()
                  joins both into the one text every host runs, ending in `main "$@"`

from buildbot_steps import release
runner = release.ReleaseRunner(release.Inventory.from_file("hosts.json"), release.SshTransport(...))
pushed = runner.push("build/", revision="abc123")
"""

from buildbot_steps.release.inventory import (
    ALL_HOSTS,
    DEFAULT_SLOTS,
    MAX_SLOTS,
    MIN_SLOTS,
    DeployInProgress,
    Host,
    InvalidInput,
    Inventory,
    ReleaseError,
    Selection,
    check_slots,
    check_word,
)  # fmt: skip
from buildbot_steps.release.reports import human_bytes
from buildbot_steps.release.runner import (
    FANOUT_DEFAULTS,
    FanoutSettings,
    HostReport,
    HostState,
    ReleaseRunner,
    RunReport,
    deploy_in_progress,
    deploy_lock,
    parse_status,
)  # fmt: skip
from buildbot_steps.release.transports import (
    TRANSPORTS,
    LocalTransport,
    SshTransport,
    host_script_argv,
    host_script_text,
)  # fmt: skip

__all__ = [
    "ALL_HOSTS",
    "DEFAULT_SLOTS",
    "FANOUT_DEFAULTS",
    "MAX_SLOTS",
    "MIN_SLOTS",
    "TRANSPORTS",
    "DeployInProgress",
    "FanoutSettings",
    "Host",
    "HostReport",
    "HostState",
    "InvalidInput",
    "Inventory",
    "LocalTransport",
    "ReleaseError",
    "ReleaseRunner",
    "RunReport",
    "Selection",
    "SshTransport",
    "check_slots",
    "check_word",
    "deploy_in_progress",
    "deploy_lock",
    "host_script_argv",
    "host_script_text",
    "human_bytes",
    "parse_status",
]
