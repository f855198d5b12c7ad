"""The shard scheduler through its Python binding: values convert both ways,
C++ errors arrive as our own exception classes, and the GIL is released."""

import collections
import random
import threading

import pytest

from buildbot_steps import _core
from buildbot_steps._core import AssignmentKind, Verdict
from buildbot_steps.shard import planning


def estimates(pairs):
    return [_core.TestEstimate(test_id, seconds) for test_id, seconds in pairs]


def test_estimates_say_where_they_came_from():
    history = [{"a.py::known": 2.0, "a.py::other": 4.0}, {"a.py::known": 3.0, "a.py::other": 4.0}]
    by_id = {e.id: e for e in _core.estimate_durations(["a.py::known", "a.py::new", "b.py::new"], history)}
    assert by_id["a.py::known"].source == "history"
    assert by_id["a.py::known"].seconds == 2.0
    assert by_id["a.py::new"].source == "file_median"
    assert by_id["b.py::new"].source == "global_median"
    assert {e.source for e in _core.estimate_durations(["x"], [])} == {"default"}


def test_estimates_carry_the_spread_of_their_runs_which_the_dispatcher_checks():
    history = [{"a.py::twice": 1.0, "a.py::once": 2.0}, {"a.py::twice": 3.0}]
    by_id = {e.id: e for e in _core.estimate_durations(["a.py::twice", "a.py::once"], history)}
    assert by_id["a.py::twice"].spread_s == pytest.approx(2**0.5)  # 1 and 3
    assert by_id["a.py::once"].spread_s is None
    assert _core.TestEstimate("a", 1.0, spread_s=0.25).spread_s == 0.25
    with pytest.raises(_core.InvalidInputError, match="'a.py::bad'"):
        _core.Dispatcher([_core.TestEstimate("a.py::bad", 1.0, spread_s=-1.0)], workers=2)


def test_the_stats_count_the_batches_cut_whole_because_the_suite_is_predictable():
    # 240 s of tests on 16 workers with a 1 s start-up: a 15 s share is worth
    # several batches, unless the history shows every test within a few percent.
    def first_batch_stats(spread_s):
        suite = [_core.TestEstimate(f"t{k // 20}.py::t{k}", 0.1, spread_s=spread_s) for k in range(2400)]
        dispatcher = _core.Dispatcher(suite, workers=16, batch_overhead_s=1.0)
        batch = dispatcher.next_batch("w0", 0.0).batch
        return batch.estimate_s, dispatcher.stats().whole_part_batches

    whole_s, whole = first_batch_stats(0.015)
    cut_s, cut = first_batch_stats(None)
    assert (whole, cut) == (1, 0)
    assert whole_s == pytest.approx(240 / 16, abs=2.0)
    assert cut_s < whole_s / 2


def test_the_stats_count_the_files_split_to_cut_a_part_to_the_test():
    # 9 files of six 1 s tests, 4 workers: parts of 13.5 s, cut inside a file.
    suite = [_core.TestEstimate(f"t{k // 6}.py::t{k}", 1.0, spread_s=0.05) for k in range(54)]
    dispatcher = _core.Dispatcher(suite, workers=4, batch_overhead_s=1.0)
    first = dispatcher.next_batch("w0", 0.0).batch
    assert first.estimate_s == pytest.approx(13.5, abs=1.0)
    per_file = collections.Counter(test.split("::")[0] for test in first.tests)
    split = [name for name, tests in per_file.items() if tests < 6]
    assert split and dispatcher.stats().files_split == len(split)


def test_plan_static_round_trip():
    tests = estimates([(f"f{k}.py::t", float(k + 1)) for k in range(20)])
    plan = _core.plan_static(tests, 4)
    assert len(plan.shards) == 4
    assert sorted(t for shard in plan.shards for t in shard.tests) == sorted(t.id for t in tests)
    assert plan.makespan_s == max(shard.estimate_s for shard in plan.shards)
    assert plan.makespan_s >= plan.lower_bound_s


def test_invalid_input_is_our_exception_and_a_value_error():
    with pytest.raises(_core.InvalidInputError, match="shards must be at least 1"):
        _core.plan_static(estimates([("a", 1.0)]), 0)
    with pytest.raises(ValueError):
        _core.plan_static([], 2)
    with pytest.raises(_core.CdError, match="'a.py::bad'"):
        _core.estimate_durations(["a.py::bad"], [{"a.py::bad": -1.0}])
    assert issubclass(_core.InvalidInputError, _core.CdError)


def test_invalid_state_for_a_batch_never_handed_out():
    dispatcher = _core.Dispatcher(estimates([("a", 1.0)]), workers=1)
    with pytest.raises(_core.InvalidStateError, match="batch 99 is not in flight"):
        dispatcher.report("w", 99, [])


def test_dispatcher_flaky_and_failed_through_python():
    dispatcher = _core.Dispatcher(
        estimates([("ok.py::t", 1), ("flaky.py::t", 1), ("bad.py::t", 1)]), workers=2
    )
    runs = {}
    while not dispatcher.done():
        progressed = False
        for worker in ("w1", "w2"):
            assignment = dispatcher.next_batch(worker, 0.0)
            if assignment.kind != AssignmentKind.run:
                continue
            progressed = True
            results = []
            for test_id in assignment.batch.tests:
                runs[test_id] = runs.get(test_id, 0) + 1
                passed = test_id == "ok.py::t" or (test_id == "flaky.py::t" and runs[test_id] > 1)
                results.append(_core.TestResult(test_id, passed, 0.1, "" if passed else "AssertionError"))
            dispatcher.report(worker, assignment.batch.id, results)
        assert progressed, "no worker got work before the suite was done"
    verdicts = {o.id: o.verdict for o in dispatcher.outcomes()}
    assert verdicts == {"ok.py::t": Verdict.passed, "flaky.py::t": Verdict.flaky, "bad.py::t": Verdict.failed}
    # The member names are the words written to Buildbot's database and the report.
    assert [verdict.name for verdict in Verdict.__members__.values()] == [
        "pending",
        "passed",
        "flaky",
        "failed",
        "skipped",
    ]
    bad = next(o for o in dispatcher.outcomes() if o.id == "bad.py::t")
    assert [a.message for a in bad.attempts] == ["AssertionError", "AssertionError"]
    assert len({a.worker for a in bad.attempts}) == 2
    stats = dispatcher.stats()
    assert (stats.passed, stats.flaky, stats.failed, stats.resolved) == (1, 1, 1, 3)


def test_python_threads_share_one_dispatcher():
    tests = estimates([(f"f{k // 3}.py::t{k}", 0.01 * (k % 7 + 1)) for k in range(3000)])
    dispatcher = _core.Dispatcher(tests, workers=4, speculate=False)
    seen, lock = [], threading.Lock()

    def work(worker):
        while True:
            assignment = dispatcher.next_batch(worker, 0.0)
            if assignment.kind == AssignmentKind.done:
                return
            if assignment.kind == AssignmentKind.wait:
                continue
            with lock:
                seen.extend(assignment.batch.tests)
            dispatcher.report(
                worker, assignment.batch.id, [_core.TestResult(t, True, 0.01) for t in assignment.batch.tests]
            )

    threads = [threading.Thread(target=work, args=(f"w{k}",)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert sorted(seen) == sorted(t.id for t in tests)


def test_history_read_by_the_core_plans_as_its_estimates_do(tmp_path):
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text('{"b.py::t": 2, "a.py::t": 1}')
    new.write_text('{"c.py::t": 3, "a.py::t": 5, "c.py::t": 4}')
    history = _core.read_duration_files([str(old), str(new)])
    assert len(history) == 2
    assert history.newest_ids == ["c.py::t", "a.py::t"]
    assert [list(run.items()) for run in history.runs] == [
        [("b.py::t", 2.0), ("a.py::t", 1.0)],
        [("c.py::t", 4.0), ("a.py::t", 5.0)],
    ]
    expected = _core.plan_static(_core.estimate_durations(history), 2)
    planned = _core.plan_from_history(history, 2)
    assert [shard.tests for shard in planned.shards] == [shard.tests for shard in expected.shards]
    subset = _core.plan_from_history(history, 1, ["a.py::t", "b.py::t", "new.py::t"])
    assert sorted(subset.shards[0].tests) == ["a.py::t", "b.py::t", "new.py::t"]
    # a: the faster of its two runs; new.py: the median of the known 1, 2 and 4
    assert subset.shards[0].estimate_s == 1.0 + 2.0 + 2.0


def test_a_simulated_build_whose_history_recorded_the_start_up_cuts_its_batches_from_the_start():
    # 240 s of 1 s tests on 8 workers, each batch starting in 2 s: a 30 s
    # share is worth floor(30 / (4 x 2)) = 3 batches. Knowing the start-up
    # from the start, as the step does from the newest build, the dispatcher
    # cuts exactly those; learning it, its first batches are small guesses.
    suite = estimates((f"t{i:03d}.py::test", 1.0) for i in range(240))
    actual = {test.id: test.seconds for test in suite}
    known = planning.simulate(suite, actual, 8, batch_overhead_s=2.0, overhead_known=True)
    learnt = planning.simulate(suite, actual, 8, batch_overhead_s=2.0)
    assert known.batches == 8 * 3
    assert known.makespan_s == pytest.approx(30.0 + 3 * 2.0)
    assert learnt.batches > known.batches


def test_the_stats_say_a_surprise_prone_suite_caps_its_batches_at_a_share_by_count():
    # 100 tests of 0.1 s on 4 workers with a 1 s start-up: tests straying by
    # a second each make a second batch per worker worth its start-up.
    def cap(spread_s):
        suite = [_core.TestEstimate(f"t.py::test_{i}", 0.1, spread_s=spread_s) for i in range(100)]
        dispatcher = _core.Dispatcher(suite, workers=4, batch_overhead_s=1.0, max_batch_tests=1000)
        return dispatcher.stats().batch_tests_cap

    assert cap(1.0) == 25
    assert cap(0.001) == 1000
    assert cap(None) == 1000  # no spread known: no surprise to expect


def test_re_runs_cut_from_batches_failing_every_way_never_stall_the_dispatcher():
    # Workers report at random: every test failing on its own, or nothing at
    # all (a batch that failed as a whole: its tests are searched in isolated
    # runs). An isolated run of several tests, each tried by another worker,
    # once stalled it: each worker waited for another that had not run one of
    # its tests, and all of them waited.
    rng = random.Random(93)
    estimates = [_core.TestEstimate(f"t/f{i // 13}.py::t{i}", 0.2 + rng.random() * 3) for i in range(200)]
    dispatcher = _core.Dispatcher(estimates, workers=3, max_attempts=3, speculate=False, min_batch_s=1)
    workers = [f"w{k}" for k in range(3)]
    running: dict[str, tuple[int, list[str]]] = {}
    now = 0.0
    for _ in range(50_000):
        if dispatcher.done():
            break
        worker = rng.choice(workers)
        if worker in running:
            batch_id, tests = running.pop(worker)
            failed = [_core.TestResult(t, False, 0.1, "boom") for t in tests] if rng.random() < 0.5 else []
            dispatcher.report(worker, batch_id, failed, 1.0)
            continue
        assignment = dispatcher.next_batch(worker, now)
        now += rng.random() * 3
        if assignment.kind == AssignmentKind.run:
            running[worker] = (assignment.batch.id, list(assignment.batch.tests))
    assert dispatcher.done()
    assert {o.verdict for o in dispatcher.outcomes()} == {Verdict.failed}
