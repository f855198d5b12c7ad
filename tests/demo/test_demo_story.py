"""The demo's story end to end, on real parts: the shop's Git repository
polled by a master from master.cfg.example, sharded tests on real workers, a
12-host web fleet on loopback under a load generator, the canary judge.

Three commits, and what each must come to: live on every host; rolled back by
the canary (errors go up on the canary hosts; the rest of the fleet never
serves it); never deployed (a test breaks). Asserted from the REST API and
from each host's `current`.
"""

from __future__ import annotations

import pytest

from harness import demo_story
from harness.demo_story import LIVE, NEVER_DEPLOYED, ROLLED_BACK, LoopStory, Windows
from harness.local_master import is_buildbot_process, recorded, stop_recorded, wait_until

# Shorter than the demo's windows, still several looks each.
TEST_WINDOWS = Windows(baseline_s=4, canary_s=12, interval_s=2, monitor_s=6, poll_s=1)
SUCCESS, FAILURE = 0, 2
STORY_DEADLINE_S = 400


@pytest.fixture
def story(tmp_path):
    story = LoopStory(tmp_path / "demo", windows=TEST_WINDOWS)
    try:
        story.start()
        yield story
    finally:
        story.stop()


@pytest.mark.timeout(900)
def test_three_commits_live_rolled_back_never_deployed(story):
    good, production_bug, broken_test = demo_story.run_story(story, STORY_DEADLINE_S, say=lambda _: None)
    assert [o.result for o in (good, production_bug, broken_test)] == [LIVE, ROLLED_BACK, NEVER_DEPLOYED]

    # The good commit: green, past the canary, on every host, still there at the end.
    assert good.deploy["results"] == SUCCESS, good.deploy["state_string"]
    assert good.deploy["properties"]["canary_verdict"] == "PASS"
    assert good.deploy["properties"]["canary_action"] != "rolled back canary"
    assert set(story.live_revisions().values()) == {good.commit.sha}

    # The production bug: its tests were green, the canary saw the errors and rolled back.
    assert production_bug.tests["results"] == SUCCESS
    assert production_bug.deploy["results"] == FAILURE
    properties = production_bug.deploy["properties"]
    assert (properties["canary_verdict"], properties["canary_failing_metric"]) == ("FAIL", "errors")
    assert properties["canary_phase"] == "canary"
    assert properties["canary_action"] == "rolled back canary"
    # Only canary hosts were ever flipped to it.
    assert set(properties["canary_hosts"]) == {f"web{i}" for i in range(1, demo_story.CANARIES + 1)}

    # The broken test: red, and no deploy was ever requested for it.
    assert broken_test.tests["results"] == FAILURE
    assert story.builds_of("deploy", "deploy_revision", broken_test.commit.sha) == []

    lines = demo_story.timeline(story, [good, production_bug, broken_test])
    assert f"live {len(story.cluster.hosts)}/{len(story.cluster.hosts)} hosts" in lines[1]
    assert "rolled back (canary)" in lines[2] and NEVER_DEPLOYED in lines[3]

    # What `make demo-stop` does, from the record alone: every process of the
    # demo, master, workers, web hosts and load generator, is stopped.
    pids, _ = recorded(story.root)
    others = ["load generator", "master", "coordinator"]
    assert len(pids) == len(story.cluster.hosts) + len(others) + demo_story.SHARD_WORKERS
    assert stop_recorded(story.root, "demo stopped") == len(pids)
    wait_until(lambda: not any(is_buildbot_process(pid) for pid in pids), 30, "every demo process to end")
