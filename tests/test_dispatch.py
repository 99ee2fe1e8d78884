"""The measuring dispatcher's protocol (dispatch.Choice), driven with synthetic timings.

Deterministic: the times a call "took" are given, so each rule (warm-up,
blocks, minima, extra rounds, the confirming round, drift, freezing) is
checked on its own, on every machine.
"""
import pytest

from sparseprune.inference import dispatch
from sparseprune.inference.dispatch import Choice


@pytest.fixture(autouse=True)
def _measure(monkeypatch):
    monkeypatch.setenv("SPARSEPRUNE_DISPATCH", "measure")  # the suite runs under "model"


def call(ch, times):
    """One call as the layers make it: run ch.next(), time it if ch.watch() says so."""
    path = ch.next()
    if ch.watch():
        ch.record(path, times[path], 1)
    return path


def test_blocks_warm_up_and_the_lowest_minimum_wins():
    ch = Choice(("sparse", "dense"))
    fast = {"sparse": 1.0, "dense": 3.0}
    paths = [call(ch, fast) for _ in range(2 * (dispatch.SAMPLES + 1))]
    n = dispatch.SAMPLES + 1
    assert paths == ["sparse"] * n + ["dense"] * n  # one block each, in the given order
    assert ch.chosen == "sparse" and ch.settled  # 3x apart: not a close call
    assert ch.measured == {"sparse": 1.0, "dense": 3.0}
    # The warm-up calls are not timed: a huge first time changes nothing...
    ch = Choice(("sparse", "dense"))
    call(ch, {"sparse": 100.0})
    while ch.chosen is None:
        call(ch, fast)
    assert ch.chosen == "sparse" and ch.measured == {"sparse": 1.0, "dense": 3.0}


def test_warm_up_lasts_while_calls_keep_getting_faster():
    # A kernel ramping up after an idle spell (as measured: 640, 340, 290, 240, then 220 us):
    # the warm-up goes on until a call is no longer RAMP x faster than the one before.
    ch = Choice(("sparse", "dense"))
    ramp = iter([6.4, 3.4, 2.9, 2.4, 2.2, 2.3, 2.2])
    while ch._idx == 0 and ch.chosen is None:
        call(ch, {"sparse": next(ramp)})
    assert ch._times["sparse"] == [2.2, 2.3, 2.2]  # 6.4, 3.4, 2.9, 2.4 were warm-up calls
    # Never more than MAX_WARMUP warm-up calls, however long the ramp.
    ch = Choice(("sparse", "dense"))
    for k in range(dispatch.MAX_WARMUP + 1):
        call(ch, {"sparse": 0.5 ** k})
    assert ch._times["sparse"] == [0.5 ** dispatch.MAX_WARMUP]


def test_a_far_slower_candidate_stops_after_one_timed_call():
    ch = Choice(("sparse", "dense"))
    times = {"sparse": 1.0, "dense": dispatch.EARLY_OUT * 1.5}
    paths = []
    while ch.chosen is None:
        paths.append(call(ch, times))
    n = dispatch.SAMPLES + 1
    assert paths == ["sparse"] * n + ["dense"] * 2  # dense: its warm-up and one timed call
    assert ch.chosen == "sparse" and not ch.settled  # one timed call decided: confirmed later
    # Not far enough behind: timed in full.
    ch = Choice(("sparse", "dense"))
    times = {"sparse": 1.0, "dense": dispatch.EARLY_OUT * 0.9}
    paths = []
    while ch.chosen is None:
        paths.append(call(ch, times))
    assert paths == ["sparse"] * n + ["dense"] * n


def test_near_ties_are_confirmed_then_measured_again_up_to_max_rounds(monkeypatch):
    monkeypatch.setattr(dispatch, "CONFIRM_AFTER_S", 0.0)
    ch = Choice(("sparse", "dense"))
    tie = {"sparse": 1.0, "dense": 1.01}
    per_round = 2 * dispatch.SAMPLES
    n_calls = 0
    while ch.chosen is None:
        call(ch, tie)
        n_calls += 1
    # The first round decides at once (provisionally: a close call is confirmed later).
    assert n_calls == 2 + per_round and ch.chosen == "sparse" and not ch.settled
    measuring = 0
    for _ in range(dispatch.CONFIRM_AFTER + 40 * per_round):
        measuring += ch.chosen is None
        call(ch, tie)
    # The confirming round (a warm-up each), then near-tie rounds up to MAX_ROUNDS in all.
    assert ch.settled and ch.chosen == "sparse"
    assert measuring == 2 + (dispatch.MAX_ROUNDS - 1) * per_round


def test_a_close_call_is_confirmed_and_both_rounds_decide(monkeypatch):
    monkeypatch.setattr(dispatch, "CONFIRM_AFTER_S", 0.0)
    ch = Choice(("sparse", "dense"))
    # First round: sparse measured in a bad moment (1.3x dense): dense wins, a close call.
    first = {"sparse": 1.3, "dense": 1.0}
    while ch.chosen is None:
        call(ch, first)
    assert ch.chosen == "dense" and not ch.settled and "once more" in ch.state()
    # Later calls: sparse's true time is 0.6. After CONFIRM_AFTER calls the candidates are
    # measured again (a warm-up each, then SAMPLES timed calls) and the minima decide.
    later = {"sparse": 0.6, "dense": 1.0}
    paths = [call(ch, later) for _ in range(dispatch.CONFIRM_AFTER + 4 * dispatch.WATCH_EVERY)]
    assert ch.chosen == "sparse" and ch.settled and ch.state() == "measured twice"
    assert paths[: dispatch.CONFIRM_AFTER - 1] == ["dense"] * (dispatch.CONFIRM_AFTER - 1)
    assert paths[-1] == "sparse" and ch.measured == {"sparse": 0.6, "dense": 1.0}
    # Confirmed once only: no further rounds.
    for _ in range(5 * dispatch.CONFIRM_AFTER):
        assert call(ch, later) == "sparse"


def test_a_path_timed_once_in_a_hiccup_is_confirmed(monkeypatch):
    monkeypatch.setattr(dispatch, "CONFIRM_AFTER_S", 0.0)
    ch = Choice(("sparse", "dense"))
    # Dense's one timed call lands in a hiccup (18x its true time): cut short, sparse chosen...
    while ch.chosen is None:
        call(ch, {"sparse": 1.0, "dense": 9.0})
    assert ch.chosen == "sparse" and "once more" in ch.state()
    # ... and the confirming round, CONFIRM_AFTER calls later, times dense at its true 0.5.
    true = {"sparse": 1.0, "dense": 0.5}
    for _ in range(dispatch.CONFIRM_AFTER + 4 * dispatch.WATCH_EVERY):
        call(ch, true)
    assert ch.chosen == "dense" and ch.settled and ch.state() == "measured twice"
    # A second one-sample verdict is final: confirmed once only.
    assert all(call(ch, true) == "dense" for _ in range(5 * dispatch.CONFIRM_AFTER))


def _after_blas(blas, monkeypatch):
    """A layer whose parallel sparse kernel runs at 1.3 within 0.1 s after a multi-threaded BLAS
    call (OpenBLAS's workers spin) and at 0.8 otherwise, dense BLAS at 1.0; the process starts in
    the wake of BLAS work, and each call takes 10 ms of a fake clock. Returns the choice."""
    clock = [0.0]
    monkeypatch.setattr(dispatch.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(dispatch, "CONFIRM_AFTER_S", 0.0)
    ch = Choice(("sparse", "dense"), blas=blas)
    last_blas = 0.0
    for _ in range(dispatch.CONFIRM_AFTER + 40 * dispatch.WATCH_EVERY):
        clock[0] += 0.01
        path = ch.next()
        times = {"sparse": 1.3 if clock[0] - last_blas < 0.1 else 0.8, "dense": 1.0}
        if ch.watch():
            ch.record(path, times[path], 1)
        if path == "dense":
            last_blas = clock[0]
    return ch


def test_after_blas_calls_the_other_path_is_timed_outside_the_spin_window(monkeypatch):
    # The first round times sparse in the wake (1.3 against dense's 1.0): dense, a close call.
    # The confirming round starts right after dense calls; sparse's calls within BLAS_SPIN_S
    # are warm-up, so it is timed at its own 0.8 and wins.
    ch = _after_blas(("dense",), monkeypatch)
    assert ch.chosen == "sparse" and ch.settled and ch.measured["sparse"] == 0.8
    # Without naming dense as the BLAS path, both rounds time sparse in the wake: dense is kept.
    ch = _after_blas((), monkeypatch)
    assert ch.chosen == "dense" and ch.settled and ch.measured["sparse"] == 1.3


def test_a_clear_call_is_not_measured_again():
    ch = Choice(("sparse", "dense"))
    while ch.chosen is None:
        call(ch, {"sparse": 1.0, "dense": 2.0})
    assert ch.settled
    assert all(call(ch, {"sparse": 1.0, "dense": 2.0}) == "sparse" for _ in range(500))


def test_sustained_drift_starts_a_new_measurement_and_an_outlier_does_not():
    ch = Choice(("sparse", "dense"))
    while ch.chosen is None:
        call(ch, {"sparse": 1.0, "dense": 3.0})
    # One slow timed call in every other: never DRIFT_CALLS in a row.
    for i in range(4 * dispatch.DRIFT_CALLS * dispatch.WATCH_EVERY):
        call(ch, {"sparse": 10.0 if (i // dispatch.WATCH_EVERY) % 2 else 1.0, "dense": 3.0})
    assert ch.chosen == "sparse" and ch.n_remeasured == 0
    # Sustained: sparse became 10x slower; after DRIFT_CALLS timed calls in a row, measured anew.
    slow = {"sparse": 10.0, "dense": 3.0}
    for _ in range((dispatch.DRIFT_CALLS + 1) * dispatch.WATCH_EVERY):
        call(ch, slow)
    assert ch.n_remeasured == 1
    while ch.chosen is None:
        call(ch, slow)
    assert ch.chosen == "dense"


def test_frozen_and_single_candidates_are_never_timed(monkeypatch):
    ch = Choice(("sparse", "dense"))
    ch.freeze("dense")
    assert ch.frozen and ch.chosen == "dense" and not ch.watch()
    assert Choice(("sparse",)).chosen == "sparse" and not Choice(("sparse",)).watch()
    # The cost model's pick, unmeasured, under SPARSEPRUNE_DISPATCH=model.
    monkeypatch.setenv("SPARSEPRUNE_DISPATCH", "model")
    ch = Choice(("sparse", "dense"), prior="dense")
    assert ch.chosen == "dense" and not ch.watch() and ch.state() == "cost model"


def _run(ch, times, n):
    """``n`` calls; returns the paths run and the seconds they took in all."""
    paths = [call(ch, times) for _ in range(n)]
    return paths, sum(times[p] for p in paths)


def test_a_deferred_candidate_waits_until_the_calls_have_paid_for_it(monkeypatch):
    monkeypatch.setattr(dispatch, "CONFIRM_AFTER_S", 0.0)
    setup = [40.0]  # the dense copy the deferred candidate needs, in the fake seconds of a call
    ch = Choice(("sparse", "dense"), deferred={"dense": lambda: setup[0]})
    # The first candidate runs at once (no measuring calls), timed one call in WATCH_EVERY.
    assert ch.chosen == "sparse" and not ch.settled and "to be measured once" in ch.state()
    times = {"sparse": 1.0, "dense": 0.5}
    # Its price: the set-up plus EXPLORE_CALLS calls at the leader's time, within EXPLORE_BUDGET
    # of the time spent: (40 + 4 * 1) / 0.05 = 880 calls of 1 s.
    price = setup[0] + dispatch.EXPLORE_CALLS * times["sparse"]
    due = price / dispatch.EXPLORE_BUDGET
    paths, _ = _run(ch, times, int(due) - dispatch.WATCH_EVERY)
    assert set(paths) == {"sparse"} and ch.measured == {"sparse": 1.0}
    # Frozen while it waits: settled, and the deferred candidate is never measured.
    frozen = Choice(("sparse", "dense"), deferred={"dense": lambda: 40.0})
    _run(frozen, times, 3 * dispatch.WATCH_EVERY)
    frozen.freeze()
    assert frozen.settled and frozen.state() == "frozen" and set(_run(frozen, times, 2000)[0]) == {"sparse"}
    # Made before its turn comes (by another caller), the copy costs nothing: only its calls count.
    setup[0] = 0.0
    paths, _ = _run(ch, times, 2 * dispatch.WATCH_EVERY)
    assert "dense" in paths
    # Measured in full, the faster candidate wins; a close call or not, the protocol goes on as usual.
    for _ in range(dispatch.CONFIRM_AFTER + 8 * dispatch.WATCH_EVERY):
        call(ch, times)
    assert ch.chosen == "dense" and ch.settled and ch.measured == {"sparse": 1.0, "dense": 0.5}


def test_deferred_measuring_stays_within_its_budget(monkeypatch):
    # Over any prefix of the calls, the measuring's extra time (the deferred candidate's set-up and
    # its slower calls) stays within about EXPLORE_BUDGET of the calls' time.
    monkeypatch.setattr(dispatch, "CONFIRM_AFTER_S", 0.0)
    made = []
    ch = Choice(("sparse", "dense"), deferred={"dense": lambda: 0.0 if made else 30.0})
    times = {"sparse": 1.0, "dense": 3.0}
    spent = extra = 0.0
    for _ in range(3000):
        path = ch.next()
        if path == "dense" and not made:
            made.append(True)
            extra += 30.0
        if ch.watch():
            ch.record(path, times[path], 1)
        spent += times[path]
        extra += times[path] - times["sparse"]
        assert extra <= 1.5 * dispatch.EXPLORE_BUDGET * spent + 1e-9
    assert made and ch.chosen == "sparse" and ch.settled


def test_a_deferred_candidate_the_cost_model_expects_to_win_is_measured_at_once():
    # Dense priced at 0.3 per row against sparse's measured 1.0: measured at the first timed call.
    ch = Choice(("sparse", "dense"), deferred={"dense": lambda: 1e6}, expected={"dense": 0.3})
    paths, _ = _run(ch, {"sparse": 1.0, "dense": 0.4}, 2 * dispatch.WATCH_EVERY + 2 * (dispatch.SAMPLES + 1))
    assert paths[: dispatch.WATCH_EVERY] == ["sparse"] * dispatch.WATCH_EVERY
    assert ch.chosen == "dense" and ch.measured == {"sparse": 1.0, "dense": 0.4}


def test_short_calls_are_timed_less_often():
    # At least WATCH_S of calls between two timed ones: a 2 us call is timed one in 100.
    ch = Choice(("sparse", "dense"))
    while ch.chosen is None:
        call(ch, {"sparse": 2e-6, "dense": 7e-6})
    assert round(dispatch.WATCH_S / 2e-6) <= ch.every <= round(dispatch.WATCH_S / 2e-6) + 1
    assert sum(ch.watch() for _ in range(10 * ch.every)) == 10
    ch = Choice(("sparse", "dense"))
    while ch.chosen is None:
        call(ch, {"sparse": 1e-3, "dense": 7e-3})
    assert ch.every == dispatch.WATCH_EVERY


def test_calls_far_apart_are_all_timed_and_a_choice_made_back_to_back_is_revised(monkeypatch):
    # Measured on back-to-back calls, a parallel pass wins (47 against 60 us); called after idle
    # spells (50 ms apart), it takes 400 us and the serial call 200 us. Once the calls come over
    # SPORADIC_S apart every call is timed, so the drift rule sees the new pattern within
    # DRIFT_CALLS calls and the choice is measured again on it.
    clock = [0.0]
    monkeypatch.setattr(dispatch.time, "perf_counter", lambda: clock[0])
    ch = Choice(("fused", "layers"))
    warm = {"fused": 60e-6, "layers": 47e-6}
    n = 0
    while not ch.settled or n < 100:
        path = ch.next()
        clock[0] += warm[path]
        if ch.watch():
            ch.record(path, warm[path], 1)
        n += 1
    assert ch.chosen == "layers" and ch.every == dispatch.WATCH_EVERY
    cold = {"fused": 200e-6, "layers": 400e-6}
    paths = []
    for _ in range(dispatch.WATCH_EVERY + dispatch.DRIFT_CALLS + 4 * (dispatch.MAX_WARMUP + dispatch.SAMPLES)):
        clock[0] += 0.05
        path = ch.next()
        clock[0] += cold[path]
        if ch.watch():
            ch.record(path, cold[path], 1)
        paths.append(path)
    assert ch.every == 1 and ch.n_remeasured == 1 and ch.chosen == "fused" and paths[-1] == "fused"
    # Back to back again: the calls run over DRIFT x faster than the (cold) best, so the choice is
    # measured once more on warm calls, and the parallel pass wins again.
    for _ in range((dispatch.DRIFT_CALLS + 4) * dispatch.WATCH_EVERY):
        path = ch.next()
        clock[0] += warm[path]
        if ch.watch():
            ch.record(path, warm[path], 1)
    assert ch.n_remeasured == 2 and ch.chosen == "layers" and ch.every == dispatch.WATCH_EVERY
