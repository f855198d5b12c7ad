"""buildbot-cd: continuous deployment for Buildbot.

Sharded test runs, parallel rsync fan-out with atomic release flips, and a
statistical canary judge, as Buildbot steps over a C++ core.
"""
