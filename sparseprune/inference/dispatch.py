"""The measuring dispatcher: pick between candidate paths by timing them on the real calls.

Like cuDNN's benchmark mode or an FFTW ``MEASURE`` plan, the choice between
candidate implementations of one computation (dense BLAS or the sparse kernel
for a layer; the fused whole-network kernel or layer-by-layer calls for a
model) is measured on the real weights and the real inputs, per batch-size
bucket and thread count, instead of being predicted from a one-shape
micro-benchmark. A cost model may only rule out hopeless candidates first.

How a :class:`Choice` measures, cheaply and robustly:

- The measuring is done by the caller's own calls: each call runs one
  candidate and its result is returned as usual, so nothing is computed
  twice. The candidates are measured one block after the other, in the
  order given: the first call of each is not timed (it pays compilation,
  page faults, a dense copy of the weights, cold caches), nor the next ones
  while each is faster than ``RAMP`` times the one before (up to
  ``MAX_WARMUP`` calls: after an idle spell a parallel kernel takes a few
  calls to reach its steady speed, and timing those made the dispatcher
  sweep keep dense BLAS on a layer where the sparse kernel was 1.7x faster),
  then ``SAMPLES`` calls are timed, per input row (only one, when it takes
  more than ``EARLY_OUT`` times the best of a candidate already measured:
  in the serving benchmark, measuring dense BLAS on 95 %-pruned layers at
  batch 256 was most of what a model's first 100 calls paid). Blocks, not alternating calls: after a
  multi-threaded BLAS call OpenBLAS's workers spin on the cores for about
  0.1 s, and a parallel sparse kernel run in that window measured 2-3x
  slower, so alternating calls would time each path in the other's wake
  (the sparse path goes first for the same reason).
- The winner is the candidate with the lowest *minimum* time (the minimum is
  the sample least disturbed by the rest of the machine).
- A close choice (the runner-up within ``CONFIRM_RATIO`` of the winner), and
  one where a candidate was timed only once (``EARLY_OUT``), is
  confirmed once: at least ``CONFIRM_AFTER`` calls and ``CONFIRM_AFTER_S``
  seconds later, every candidate is measured again the same way and the
  lowest minimum over both rounds wins. A process's first calls are the
  noisiest (imports, compilation, and the wake of whatever ran just before:
  after a multi-threaded BLAS call OpenBLAS's workers spin for about 0.1 s,
  and a parallel sparse kernel measured in that window ran 1.9x slower), and
  a choice made there alone was wrong on several layers of the dispatcher
  sweep. The confirming round costs the same calls as the first one, once.
  When the two best minima over both rounds are within ``CLOSE`` of each
  other, ``SAMPLES`` more of each are taken (at most ``MAX_ROUNDS`` rounds
  in all), so one noisy sample never decides. (Those extra rounds used to
  follow the first round at once: a near tie, which costs at most ``CLOSE``
  when decided wrongly, then took three rounds of slow-path calls within a
  model's first calls, +25 % over its first 100 calls at batch 1.)
- When a choice that was running a BLAS candidate (the ``blas`` argument) is
  measured again (a confirming round, or drift), the calls just before ran
  multi-threaded BLAS, whose workers then spin on the cores for about 0.1 s:
  the other candidates' calls within ``BLAS_SPIN_S`` of the round's start
  are warm-up, not timed. A confirming round timed a parallel sparse kernel
  there at 1.65x its own time and kept dense BLAS, 15 % slower than it.
- Measuring pays as it goes. A candidate that needs something made first
  (a dense copy of the weights: fresh memory, ~0.3-0.4 ns per byte of page
  faults on the Zen 5 VM) and that the cost model does not expect to win
  (``deferred``) is measured only once the calls run so far have earned it:
  its estimated price (the making, priced per byte, plus ``EXPLORE_CALLS``
  calls at the leader's time) may not take the measuring past
  ``EXPLORE_BUDGET`` of the time spent in this computation's calls. Until
  then the candidates measured so far decide, provisionally. (Measured at
  once, the dense copy of a 64-300-100-10 model's weights and its first
  calls made the model's first 100 calls at batch 1 11 % slower than with
  the choice known.) A candidate whose copy exists already is priced at its
  calls only.
- After the choice, one call in ``WATCH_EVERY`` is timed (:meth:`Choice.watch`),
  or fewer on calls of a few microseconds (at least ``WATCH_S`` of calls
  between two timed ones, at most ``WATCH_MAX`` calls: a timed call runs
  the dispatcher's bookkeeping cold, 1-5 us on the Zen 5 VM, which was 4 %
  of a 64-300-100-10 model's first 100 calls at batch 1),
  and compared with the winner's measured minimum; ``DRIFT_CALLS`` such
  calls in a row slower than ``DRIFT`` times it, or faster than it by that
  factor (a sustained change, not an outlier), start a new measurement. Timing every call would add two clock
  reads and a method call to every call of a layer that may take 2 us.
- A frozen choice (``freeze``, or loaded with a model) never changes.

Everything is in memory: nothing is written to disk unless the user saves a
model with its frozen plan. All state changes happen under a lock, but the
count of settled calls (a lost increment only shifts which call is timed),
so any number of threads may call at once.

``SPARSEPRUNE_DISPATCH=model`` turns measuring off: every choice is the cost
model's first candidate, at once and for good (no re-measuring). Choices then
depend on the layer and the cost table only, not on this machine's timings:
reproducible runs, and the test suite, which covers the same paths on every
machine. ``measure`` (the default) measures as above.
"""
from __future__ import annotations

import math
import os
import threading
import time

__all__ = ["Choice", "bucket_of"]

#: Timed calls per candidate and round (after the untimed warm-up calls).
SAMPLES = 3
#: Warm-up calls of a candidate continue while each is faster than RAMP x the previous one...
RAMP = 0.9
#: ... up to this many calls.
MAX_WARMUP = 8
#: A candidate whose first timed call takes more than this times the best of a candidate
#: already measured in full is not timed further in that round.
EARLY_OUT = 3.0
#: Two candidates whose best times are within this fraction are measured again.
CLOSE = 0.05
#: Most measuring rounds (the first and the confirming one included) before the lower minimum wins anyway.
MAX_ROUNDS = 3
#: A choice whose runner-up measured within this factor of the winner is measured again, once...
CONFIRM_RATIO = 1.5
#: ... after at least this many calls and seconds since the choice.
CONFIRM_AFTER = 64
CONFIRM_AFTER_S = 0.25
#: A timed call slower than DRIFT x the winner's minimum counts towards re-measuring...
DRIFT = 2.0
#: ... once this many timed calls in a row were...
DRIFT_CALLS = 8
#: ... where, once a choice is made, one call in this many is timed.
WATCH_EVERY = 16
#: ... or, on short calls, one in as many as take this long at the winner's time...
WATCH_S = 200e-6
#: ... but at least one in this many. Where the calls come far apart (over ``SPORADIC_S`` of
#: wall time per call between two timed ones: a program calling among its own work), every call
#: is timed: its bookkeeping is then nothing next to the wall time, and a choice measured on
#: back-to-back calls is re-checked within ``DRIFT_CALLS`` calls of the new pattern (a parallel
#: layer-by-layer pass of a 784-1024-1024-10 model won warm at 47 against 60 us, and took 400 us
#: against the fused serial call's 200 us when called after idle spells; one timed call in 16
#: took ~170 such calls to notice).
WATCH_MAX = 256
SPORADIC_S = 1e-3
#: After a multi-threaded BLAS call OpenBLAS's workers spin this long: when a choice that ran
#: a BLAS candidate (``blas``) is measured again, the other candidates' calls in this window
#: are warm-up, not timed (a parallel sparse layer, 2568 x 78 at batch 27: 123-131 us per call
#: for the first 100 ms after dense calls, then 74-78 us; dense BLAS 90 us).
BLAS_SPIN_S = 0.11
#: A ``deferred`` candidate is measured once its estimated price keeps everything measuring
#: has cost within this share of the time the computation's calls have taken...
EXPLORE_BUDGET = 0.05
#: ... its price being its set-up (``deferred[c]()`` seconds) plus this many calls at the leader's time...
EXPLORE_CALLS = 4
#: ... where making an array costs this much per byte (first touch of fresh memory: 0.28-0.37 ns
#: per byte on the Zen 5 VM for 80 KB-4 MB, page faults included; bare metal is several times cheaper).
FRESH_BYTE_S = 0.4e-9


POLICIES = ("measure", "model")


def policy() -> str:
    """The dispatch policy from ``SPARSEPRUNE_DISPATCH`` (``measure`` unless set), read when a choice is made."""
    p = os.environ.get("SPARSEPRUNE_DISPATCH", "").strip().lower() or "measure"
    if p not in POLICIES:
        raise ValueError(f"SPARSEPRUNE_DISPATCH={os.environ['SPARSEPRUNE_DISPATCH']!r} is not a dispatch policy; "
                         f"use one of {list(POLICIES)} or unset it.")
    return p


def bucket_of(batch: int) -> int:
    """The batch-size bucket a measurement is kept for: 1, then one per power of two (2-3, 4-7, ...)."""
    return 1 if batch <= 1 else 1 << (int(batch).bit_length() - 1)


class Choice:
    """Which of ``candidates`` runs one computation at one batch bucket, measured on the real calls.

    Parameters
    ----------
    candidates : tuple of str
        The paths still in the running after the cost model; a single
        candidate is chosen at once, without measuring.
    reason : str
        Why these candidates (the cost model's verdict), for ``explain``.
    chosen, frozen : a choice made already (a saved plan), and whether it may never change.
    prior : str, optional
        The cost model's pick, taken without measuring under ``SPARSEPRUNE_DISPATCH=model``
        (default: the first candidate).
    blas : tuple of str, optional
        The candidates that run (possibly multi-threaded) BLAS; see ``BLAS_SPIN_S``.
    deferred : dict, optional
        ``candidate -> set-up seconds`` (a callable, asked when the candidate's
        turn comes): candidates measured only within ``EXPLORE_BUDGET``
        (never the first one)...
    expected : dict, optional
        ... unless the cost model's time per input row for the candidate
        (``candidate -> seconds``) is below the best measured so far: then it
        is measured in its turn.
    """

    __slots__ = ("_best", "_blas", "_confirm_after", "_confirmed", "_deferred", "_done", "_expected", "_explore_at",
                 "_fixed", "_idle", "_idx", "_last_watch", "_lock", "_pending", "_quiet_until", "_rounds", "_rows",
                 "_seen", "_slow", "_spent", "_tick", "_times", "_used", "_warm", "candidates", "chosen", "every",
                 "frozen", "n_remeasured", "reason")

    def __init__(self, candidates: tuple, reason: str = "", chosen: str | None = None, frozen: bool = False,
                 prior: str | None = None, blas: tuple = (), deferred: dict | None = None,
                 expected: dict | None = None):
        self.candidates = tuple(candidates)
        self._blas = frozenset(blas)
        self._deferred = {c: f for c, f in (deferred or {}).items() if c in self.candidates[1:]}
        self._expected = dict(expected or {})
        self.reason = reason
        self.frozen = frozen
        self.chosen = chosen if chosen is not None else (self.candidates[0] if len(self.candidates) == 1 else None)
        if self.chosen is None and policy() == "model":
            self.chosen = prior if prior in self.candidates else self.candidates[0]
            self._fixed = True
            self.reason = (reason + "; " if reason else "") + "SPARSEPRUNE_DISPATCH=model: not measured"
        else:
            self._fixed = False
        self._lock = threading.Lock()
        self._tick = 0
        # Seconds of calls run through this choice (estimated from the timed ones once chosen),
        # and the estimated price of the deferred measuring started so far.
        self._spent = self._used = 0.0
        self._rows = 1
        self._idle = 0.0  # idle seconds between calls, as last seen on timed calls
        self._reset()
        if self.chosen is None and len(self.candidates) > 1 and set(self.candidates[1:]) <= set(self._deferred):
            # Nothing to compare the first candidate with until the calls have earned the others:
            # it runs at once, timed one call in ``every`` like a settled choice, and those calls
            # are its samples (no slow-path measuring calls at the start). Drift is not watched
            # meanwhile: the deferred measuring comes first.
            self.chosen = self.candidates[0]
            self._done.add(self.chosen)
            self._pending = list(range(1, len(self.candidates)))
        self.n_remeasured = 0

    def _reset(self) -> None:
        self._idx = 0
        self._seen = {c: 0 for c in self.candidates}
        self._warm = {c: math.inf for c in self.candidates}
        self._times = {c: [] for c in self.candidates}
        self._rounds = 1
        self._best = math.inf
        self._slow = 0
        self._confirm_after = None
        self._confirmed = False
        self._quiet_until = 0.0
        self._done: set = set()  # candidates measured in full in this round
        self._pending: list = []  # deferred candidates not measured yet, by index
        self._explore_at = -1.0  # seconds of calls that pay for the first pending one (< 0: to be priced)
        self.every = WATCH_EVERY
        self._last_watch = 0.0  # perf_counter of the last timed call once chosen (0: none yet)

    @property
    def settled(self) -> bool:
        """Whether the choice is made and no confirming round or deferred measuring is still due."""
        return self.chosen is not None and self._confirm_after is None and not self._pending

    def _lead(self) -> float:
        return min((min(t) for t in self._times.values() if t), default=0.0)

    def _price(self, candidate: str) -> float:
        """The estimated cost of measuring a deferred ``candidate`` now (seconds)."""
        return float(self._deferred[candidate]()) + EXPLORE_CALLS * self._lead() * self._rows

    def _affordable(self, candidate: str) -> bool:
        return (candidate not in self._deferred
                or self._expected.get(candidate, math.inf) < self._lead()
                or self._used + self._price(candidate) <= EXPLORE_BUDGET * self._spent)

    def _set_every(self, idle_per_call: float = 0.0) -> None:
        """Calls per timed call: from the winner's time, or 1 where calls come ``SPORADIC_S`` apart."""
        if idle_per_call > SPORADIC_S:
            self.every = 1
            return
        call = self._best * self._rows
        self.every = WATCH_EVERY if not call < WATCH_S / WATCH_EVERY else min(WATCH_MAX, math.ceil(WATCH_S / call))

    def _pace(self, seconds: float) -> None:
        """On a timed call (of ``seconds``) once chosen: the idle time between calls since the
        last timed one, and so how often to time them."""
        now = time.perf_counter()
        last, self._last_watch = self._last_watch, now
        if last:
            self._idle = (now - last) / self.every - seconds
            self._set_every(self._idle)

    def _threshold(self, j: int) -> float:
        """The seconds of calls (``_spent``) from which pending candidate ``j`` is affordable."""
        c = self.candidates[j]
        if self._expected.get(c, math.inf) < self._lead():
            return 0.0
        return (self._used + self._price(c)) / EXPLORE_BUDGET

    def _next_block(self, start: int) -> int:
        """The index of the next candidate to measure in this round from ``start`` (``len`` if none);
        deferred candidates not affordable yet are skipped and kept pending."""
        for j in range(start, len(self.candidates)):
            c = self.candidates[j]
            if c in self._done:
                continue
            if c in self._deferred and not self._affordable(c):
                if j not in self._pending:
                    self._pending.append(j)
                    self._explore_at = -1.0
                continue
            if c in self._deferred:
                self._used += self._price(c)
                if j in self._pending:
                    self._pending.remove(j)
                    self._explore_at = -1.0
            return j
        return len(self.candidates)

    # -- the per-call protocol ------------------------------------------------
    def next(self) -> str:
        """The candidate to run for this call."""
        c = self.chosen
        return c if c is not None else self.candidates[self._idx]

    def watch(self) -> bool:
        """Whether this call should be timed and :meth:`record` ed: every call while measuring,
        one in ``WATCH_EVERY`` once chosen (for drift), none once frozen or the only candidate."""
        if self.chosen is None:
            return True
        if self.frozen or self._fixed or len(self.candidates) == 1:
            return False
        # A lost increment between threads only shifts which call is timed.
        self._tick = t = self._tick + 1
        return t % self.every == 0

    def record(self, candidate: str, seconds: float, rows: int) -> None:
        """Report that ``candidate`` took ``seconds`` for ``rows`` input rows."""
        per_row = seconds / max(rows, 1)
        self._rows = max(rows, 1)
        if self.chosen is not None:
            if self.frozen or self._fixed or len(self.candidates) == 1 or candidate != self.chosen:
                return
            calls = self.every  # the calls this timed one stands for
            self._pace(seconds)
            pending = self._pending[:1]  # a copy: another thread may empty the list meanwhile
            if pending:
                # One call in ``every`` is timed: it stands for them all, and it is a sample of the
                # running candidate (the lowest SAMPLES kept, as a measuring round would; the list
                # is replaced, not edited, so concurrent calls never see it half-changed).
                self._spent += seconds * calls
                times = self._times[candidate]
                if len(times) < SAMPLES or per_row < max(times):
                    self._times[candidate] = sorted([*times, per_row])[:SAMPLES]
                if per_row < self._best:
                    self._best = per_row
                    self._explore_at = -1.0  # a new lead: priced again
                if self._explore_at < 0:
                    self._explore_at = self._threshold(pending[0])
                if self._spent >= self._explore_at and self._affordable(self.candidates[pending[0]]):
                    with self._lock:
                        if self.chosen is not None and not self.frozen and self._pending:
                            # Measure the deferred candidate now; the ones already measured stand.
                            if self.chosen in self._blas:
                                self._quiet_until = time.perf_counter() + BLAS_SPIN_S
                            self._idx = self._next_block(0)
                            if self._idx < len(self.candidates):
                                c = self.candidates[self._idx]
                                self._seen[c], self._warm[c] = 0, math.inf
                                self.chosen = None
                return
            if self._confirm_after is not None and self._tick >= CONFIRM_AFTER:
                now = time.perf_counter()
                if now >= self._confirm_after:
                    with self._lock:
                        if self.chosen is not None and not self.frozen and self._confirm_after is not None:
                            # Measure every candidate once more (warm-up first); the minima
                            # over both rounds decide.
                            self._confirm_after = None
                            self._confirmed = True
                            if self.chosen in self._blas:
                                self._quiet_until = now + BLAS_SPIN_S
                            self.chosen = None
                            self._seen = {c: 0 for c in self.candidates}
                            self._warm = {c: math.inf for c in self.candidates}
                            self._rounds += 1
                            self._done = set()
                            self._idx = self._next_block(0)
                    return
            # Drift either way: much slower (the machine got busy, the calls now come after idle
            # spells), or much faster (a choice made on cold calls, now called back to back).
            if per_row > DRIFT * self._best or per_row * DRIFT < self._best:
                self._slow += 1
                if self._slow >= DRIFT_CALLS:
                    with self._lock:
                        if self.chosen is not None and not self.frozen:
                            was_blas = self.chosen in self._blas
                            self.chosen = None
                            self.n_remeasured += 1
                            self._reset()
                            self._idx = self._next_block(0)
                            if was_blas:
                                self._quiet_until = time.perf_counter() + BLAS_SPIN_S
            else:
                self._slow = 0
            return
        with self._lock:
            if self.chosen is not None or candidate != self.candidates[self._idx]:
                return  # a concurrent call that started before the block moved on
            self._spent += seconds
            seen = self._seen[candidate] = self._seen[candidate] + 1
            in_blas_wake = (self._quiet_until and candidate not in self._blas
                            and time.perf_counter() < self._quiet_until)
            if seen == 1 or in_blas_wake or (seen <= MAX_WARMUP and per_row < RAMP * self._warm[candidate]):
                # Warm-up: the first call of each candidate, and the next ones while they keep
                # getting faster (a parallel kernel after an idle spell ran 640, 340, 290, 240 us,
                # then 220 us steady; BLAS is steady from its second call).
                self._warm[candidate] = per_row
                return
            times = self._times[candidate]
            times.append(per_row)
            if len(times) < SAMPLES * self._rounds:
                lead = min((min(t) for c, t in self._times.items() if c != candidate and len(t) >= SAMPLES),
                           default=math.inf)
                if per_row <= EARLY_OUT * lead:
                    return
                # Far behind a candidate already measured in full: its other samples would only
                # cost calls on the slow path.
            self._done.add(candidate)
            self._idx = self._next_block(self._idx + 1)
            if self._idx < len(self.candidates):
                return
            best = sorted((min(t), c) for c, t in self._times.items() if t)
            (t0, c0), t1 = best[0], (best[1][0] if len(best) > 1 else math.inf)
            if t1 <= t0 * (1 + CLOSE) and self._confirmed and self._rounds < MAX_ROUNDS and not self._pending:
                self._rounds += 1
                self._done = set()
                self._idx = self._next_block(0)
                return
            self._best = t0
            # The pace seen before this round still holds (calls far apart stay timed each).
            self._set_every(self._idle)
            self._last_watch = time.perf_counter()
            self._tick = 0
            # A candidate cut short by EARLY_OUT was decided by one timed call: a hiccup there
            # (a page fault, a preempted core) would lock in the other path for good, so such a
            # choice is confirmed once, as a close call is (a 135 x 172 layer's dense BLAS timed
            # once at 44.8 us/row, 18x its true 2.5 us, kept the slower sparse kernel).
            timed_once = any(0 < len(t) < SAMPLES * self._rounds for t in self._times.values())
            # With a deferred candidate still pending, the confirming round waits for it.
            if not self._confirmed and not self._pending and (t1 < t0 * CONFIRM_RATIO or timed_once):
                self._confirm_after = time.perf_counter() + CONFIRM_AFTER_S
            self.chosen = c0

    # -- inspection and freezing ----------------------------------------------
    @property
    def measured(self) -> dict:
        """Best time per input row of each candidate measured so far (seconds)."""
        return {c: min(t) for c, t in self._times.items() if t}

    def freeze(self, path: str | None = None) -> None:
        """Fix the choice (to ``path``, or to the current winner; the cost model's first pick if none yet)."""
        with self._lock:
            if path is not None:
                self.chosen = path
            elif self.chosen is None:
                m = self.measured
                self.chosen = min(m, key=m.get) if m else self.candidates[0]
            self.frozen = True
            # Nothing more to measure: no deferred candidate, no confirming round.
            self._pending = []
            self._confirm_after = None

    def state(self) -> str:
        if self.chosen is None:
            done = sum(len(t) for t in self._times.values())
            return f"measuring ({done} of {SAMPLES * self._rounds * len(self.candidates)} timed calls so far)"
        if len(self.candidates) == 1 and not self._times[self.chosen]:
            return "the only candidate"
        if self._fixed:
            return "cost model"
        if self.frozen:
            return "frozen"
        pending = list(self._pending)
        if pending:
            later = ", ".join(self.candidates[j] for j in pending)
            return (f"measured so far; {later} to be measured once the calls have earned it "
                    f"(within {EXPLORE_BUDGET:.0%} of their time)")
        if self._confirm_after is not None:
            return "measured; a close call or a path timed once, to be measured once more"
        return "measured twice" if self._confirmed else "measured"

    def describe(self) -> str:
        m = self.measured
        times = ", ".join(f"{c} {t * 1e6:.3g} us/row" for c, t in sorted(m.items(), key=lambda kv: kv[1]))
        s = f"{self.chosen or '?'} ({self.state()}"
        s += f"; best of the timed calls: {times})" if times else ")"
        return s + (f"; {self.reason}" if self.reason else "")
