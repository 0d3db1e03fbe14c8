"""Retry policies give llama-index-workflows' (and tenacity's) numbers.

The expected values below were recorded by running llama-index-workflows 2.26
(``workflows.retry_policy``) and tenacity 9.2.1 on the same calls; neither is imported
here. Counting, the same in all three:

- a policy's ``next(elapsed, attempts, error)`` gets ``attempts`` = failures so far (1 after
  the first failure); both runtimes pass that, and ``attempts=0`` is clamped to 1;
- a wait strategy's ``wait(n)`` takes ``n`` = retries before this one (0 for the first
  retry), what tenacity computes from ``retry_state.attempt_number - 1``;

so ``wait_exponential(multiplier=1, exp_base=2)`` waits 1, 2, 4, 8 s after failures 1 to 4.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from piton import Context, StartEvent, StopEvent, Workflow, step
from piton.retry import (
    ConstantDelayRetryPolicy,
    ExponentialBackoffRetryPolicy,
    WaitStrategy,
    retry_always,
    retry_any,
    retry_if_exception_cause_type,
    retry_if_exception_message,
    retry_if_exception_type,
    retry_never,
    retry_policy,
    stop_after_attempt,
    stop_after_delay,
    stop_before_delay,
    stop_never,
    wait_chain,
    wait_combine,
    wait_exponential,
    wait_exponential_jitter,
    wait_fixed,
    wait_full_jitter,
    wait_incrementing,
    wait_none,
    wait_random,
    wait_random_exponential,
)
from piton.testing import FakeClock

# --- deterministic waits: wait(n) for n = 0..6 ------------------------------------------
# tenacity 9.2.1 gives the same numbers for attempt_number = n + 1 (with an explicit max:
# tenacity's default cap is ~sys.maxsize/2, llama-index-workflows' and piton's is 60 s).

DETERMINISTIC: list[tuple[str, WaitStrategy, list[float]]] = [
    ("wait_fixed(3)", wait_fixed(3), [3.0] * 7),
    ("wait_none()", wait_none(), [0.0] * 7),
    (
        "wait_exponential(multiplier=1, exp_base=2)",
        wait_exponential(multiplier=1, exp_base=2),
        [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0],  # tenacity: ..., 64 (no default cap)
    ),
    (
        "wait_exponential(multiplier=0.5, exp_base=3, max=10, min=1)",
        wait_exponential(multiplier=0.5, exp_base=3, max=10, min=1),
        [1.0, 1.5, 4.5, 10.0, 10.0, 10.0, 10.0],
    ),
    ("wait_exponential()", wait_exponential(), [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0]),
    (
        "wait_incrementing(start=1, increment=2, max=6)",
        wait_incrementing(start=1, increment=2, max=6),
        [1.0, 3.0, 5.0, 6.0, 6.0, 6.0, 6.0],
    ),
    (
        "wait_incrementing()",
        wait_incrementing(),
        [0.0, 100.0, 200.0, 300.0, 400.0, 500.0, 600.0],
    ),
    (
        "wait_chain(wait_fixed(1), wait_fixed(2), wait_fixed(5))",
        wait_chain(wait_fixed(1), wait_fixed(2), wait_fixed(5)),
        [1.0, 2.0, 5.0, 5.0, 5.0, 5.0, 5.0],
    ),
    (
        "wait_combine(wait_fixed(1), wait_exponential(multiplier=1, max=100))",
        wait_combine(wait_fixed(1), wait_exponential(multiplier=1, max=100)),
        [2.0, 3.0, 5.0, 9.0, 17.0, 33.0, 65.0],
    ),
    (
        "wait_fixed(1) + wait_exponential(multiplier=1)",
        wait_fixed(1) + wait_exponential(multiplier=1),
        [2.0, 3.0, 5.0, 9.0, 17.0, 33.0, 61.0],
    ),
]


@pytest.mark.parametrize(
    ("name", "wait", "expected"), DETERMINISTIC, ids=[d[0] for d in DETERMINISTIC]
)
def test_wait_strategies_give_the_reference_numbers(
    name: str, wait: WaitStrategy, expected: list[float]
) -> None:
    assert [wait(n) for n in range(7)] == expected


@pytest.mark.parametrize(
    ("name", "wait", "expected"), DETERMINISTIC, ids=[d[0] for d in DETERMINISTIC]
)
def test_policy_next_gives_the_reference_numbers(
    name: str, wait: WaitStrategy, expected: list[float]
) -> None:
    """``next(attempts=a)`` for a = 0..7 with stop_after_attempt(6): attempts 0 and 1 both
    wait ``wait(0)`` (0 is clamped, as llama-index-workflows does), the sixth failure stops."""
    policy = retry_policy(wait=wait, stop=stop_after_attempt(6))
    got = [policy.next(0.0, a, RuntimeError()) for a in range(8)]
    assert got == [expected[0], *expected[:5], None, None]


def test_the_issue_example_waits_1_2_4_8() -> None:
    policy = retry_policy(wait=wait_exponential(multiplier=1, exp_base=2), stop=stop_never())
    assert [policy.next(0.0, failures, RuntimeError()) for failures in (1, 2, 3, 4)] == [
        1.0,
        2.0,
        4.0,
        8.0,
    ]


# --- seeded jitter: the same seed draws the same delay as llama-index-workflows ---------
# Recorded from workflows.retry_policy: wait(n, seed=2000 + n) for n = 0..6. tenacity
# draws the same values from the global generator seeded the same way.

SEEDED: list[tuple[str, WaitStrategy, list[float]]] = [
    (
        "wait_random(min=1, max=3)",
        wait_random(min=1, max=3),
        [
            1.896914035821057,
            2.1728635284553413,
            2.4549822807373634,
            1.2255274461671382,
            2.0490910411650276,
            1.9007419945832429,
            2.109709939260748,
        ],
    ),
]


def test_seeded_wait_random_matches_the_reference() -> None:
    for _name, wait, expected in SEEDED:
        assert [wait(n, seed=2000 + n) for n in range(7)] == expected


def test_jittered_waits_match_the_reference_for_the_same_seed() -> None:
    # workflows.retry_policy, recorded: wait(n, seed=500 + n + 1) for n = 0..6
    assert [
        wait_exponential_jitter(initial=1, exp_base=2, max=20, jitter=1)(n, seed=501 + n)
        for n in range(7)
    ] == [
        1.6394206604570485,
        2.505504581060012,
        4.1709651883822145,
        8.462918354744646,
        16.149606840736094,
        20.0,
        20.0,
    ]
    assert [
        wait_random_exponential(multiplier=1, exp_base=2, max=20)(n, seed=501 + n) for n in range(7)
    ] == [
        0.6394206604570485,
        1.0110091621200235,
        0.6838607535288586,
        3.70334683795717,
        2.393709451777502,
        15.147774634317038,
        9.643245172097512,
    ]
    assert [wait_full_jitter(multiplier=2, max=30, min=1)(n, seed=501 + n) for n in range(7)] == [
        1.6394206604570485,
        2.516513743180035,
        2.1967563186755026,
        7.943775321169694,
        5.338598381346722,
        22.964273219759704,
        14.982705499541392,
    ]


def test_positional_arguments_follow_the_reference_order() -> None:
    # llama-index-workflows: wait_exponential(multiplier, exp_base, max, min);
    # wait_exponential_jitter(initial, exp_base, max, jitter)
    assert [wait_exponential(1, 3)(n) for n in range(3)] == [1.0, 3.0, 9.0]
    assert wait_exponential(1, 3, 5)(5) == 5.0
    assert wait_exponential_jitter(1, 3, 2, 0)(1) == 2.0
    assert wait_random_exponential(1, 2, 4, 4)(3, seed=1) == 4.0


# --- stop conditions: the same boundaries as tenacity / llama-index-workflows -----------


def test_stop_boundaries() -> None:
    assert [stop_after_attempt(3)(a, 0.0) for a in (1, 2, 3, 4)] == [False, False, True, True]
    assert [stop_after_delay(10)(1, e) for e in (9.9, 10.0, 10.1)] == [False, True, True]
    assert [stop_before_delay(10)(1, 5.0, upcoming_sleep=s) for s in (4.9, 5.0)] == [False, True]
    # in a policy, stop_before_delay sees the wait about to be taken
    before = retry_policy(wait=wait_fixed(4), stop=stop_before_delay(10))
    assert [before.next(e, 1, RuntimeError()) for e in (0.0, 5.9, 6.0, 7.0)] == [
        4.0,
        4.0,
        None,
        None,
    ]
    after = retry_policy(wait=wait_fixed(4), stop=stop_after_delay(10))
    assert [after.next(e, 1, RuntimeError()) for e in (0.0, 9.9, 10.0)] == [4.0, 4.0, None]


# --- the waits a failing step really takes --------------------------------------------


class AlwaysFails(Workflow):
    clock: FakeClock
    attempts_at: list[float]

    @step(
        retry_policy=retry_policy(
            wait=wait_exponential(multiplier=1, exp_base=2), stop=stop_after_attempt(5)
        )
    )
    async def call(self, ev: StartEvent, ctx: Context) -> StopEvent:
        type(self).attempts_at.append(type(self).clock.now())
        raise ConnectionError("down")


async def test_a_failing_step_waits_1_2_4_8_between_attempts() -> None:
    """llama-index-workflows 2.26, the same workflow, measured with real sleeps and
    multiplier=0.1: gaps 0.1, 0.2, 0.4, 0.8 s; piton on the fake clock: 1, 2, 4, 8 s."""
    AlwaysFails.clock = clock = FakeClock(start=0.0)
    AlwaysFails.attempts_at = []
    handler = AlwaysFails(timeout=None, clock=clock).run()
    for _ in range(4):
        await clock.next()
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(handler, 5)
    at = AlwaysFails.attempts_at
    assert [b - a for a, b in zip(at, at[1:], strict=False)] == [1.0, 2.0, 4.0, 8.0]


# --- retry conditions -----------------------------------------------------------------


class Transport(Exception):
    pass


def _raised(exc: BaseException, cause: BaseException | None = None) -> BaseException:
    try:
        raise exc from cause
    except BaseException as caught:  # noqa: BLE001
        return caught


def test_retry_if_exception_cause_type_walks_the_cause_chain() -> None:
    cond = retry_if_exception_cause_type(Transport)
    assert cond(_raised(RuntimeError("wrapped"), Transport("socket")))
    deep = _raised(ValueError("outer"), _raised(KeyError("mid"), Transport("root")))
    assert cond(deep)
    assert not cond(Transport("itself"))  # the error itself is not part of its causes
    assert not cond(_raised(RuntimeError("x"), KeyError("y")))
    # implicit chaining (__context__) is not followed
    try:
        try:
            raise Transport("first")
        except Transport:
            raise RuntimeError("during handling")  # noqa: B904
    except RuntimeError as implicit:
        assert implicit.__context__ is not None
        assert not cond(implicit)
    assert retry_if_exception_cause_type((KeyError, Transport))(_raised(RuntimeError(), KeyError()))
    assert retry_if_exception_cause_type()(_raised(RuntimeError(), KeyError()))  # Exception
    # a cycle in the chain ends the walk
    a, b = RuntimeError("a"), ValueError("b")
    a.__cause__, b.__cause__ = b, a
    assert not cond(a)


def test_retry_if_exception_message_match_searches_the_message() -> None:
    # llama-index-workflows uses re.search (tenacity anchors with re.match)
    assert retry_if_exception_message(match=r"HTTP 5\d\d")(RuntimeError("got HTTP 503 back"))
    assert not retry_if_exception_message(match=r"HTTP 5\d\d")(RuntimeError("HTTP 404"))


async def test_retry_always_never_and_stop_never_with_or_without_a_call() -> None:
    err = RuntimeError()
    for always in (retry_always, retry_always()):
        assert always(err) is True
    for never in (retry_never, retry_never()):
        assert never(err) is False
    for stop in (stop_never, stop_never()):
        assert stop(10**6, 1e9, upcoming_sleep=1.0) is False
    assert (retry_never() | retry_if_exception_type(ConnectionError))(ConnectionError())
    assert retry_any(retry_never(), retry_always())(err)
    assert retry_always.__name__ == "retry_always"
    assert retry_never.__name__ == "retry_never"
    assert stop_never.__name__ == "stop_never"
    policy = retry_policy(retry=retry_always(), wait=wait_none(), stop=stop_never())
    assert policy.next(0.0, 1000, err) == 0.0
    assert retry_policy(retry=retry_never(), wait=wait_none()).next(0.0, 1, err) is None

    calls = 0

    class W(Workflow):
        @step(retry_policy=retry_policy(retry=retry_always(), wait=wait_none(), stop=stop_never()))
        async def s(self, ev: StartEvent) -> StopEvent:
            nonlocal calls
            calls += 1
            if calls < 4:
                raise RuntimeError("again")
            return StopEvent(result=calls)

    assert await W().run() == 4


def test_wait_chain_needs_a_strategy() -> None:
    with pytest.raises(ValueError, match="at least one"):
        wait_chain()


def test_retry_policy_takes_positional_arguments() -> None:
    policy = retry_policy(retry_if_exception_type(KeyError), wait_fixed(2), stop_after_attempt(2))
    assert policy.next(0.0, 1, KeyError()) == 2.0
    assert policy.next(0.0, 2, KeyError()) is None
    assert policy.next(0.0, 1, ValueError()) is None


# --- the deprecated ready-made policies -----------------------------------------------


def test_constant_delay_retry_policy_is_deprecated() -> None:
    with pytest.warns(
        DeprecationWarning,
        match=r"ConstantDelayRetryPolicy is deprecated, use retry_policy\(wait=wait_fixed",
    ) as record:
        policy: Any = ConstantDelayRetryPolicy(maximum_attempts=2, delay=1.5)
    assert record[0].filename == __file__  # the warning points at the caller
    assert policy.next(0.0, 1, RuntimeError()) == 1.5
    assert policy.next(0.0, 2, RuntimeError()) is None


def test_exponential_backoff_retry_policy_is_deprecated() -> None:
    with pytest.warns(
        DeprecationWarning,
        match=r"ExponentialBackoffRetryPolicy is deprecated, use retry_policy\(wait=wait_exponential",
    ):
        policy: Any = ExponentialBackoffRetryPolicy(
            maximum_attempts=5, initial_delay=1, multiplier=2, max_delay=5, jitter=False
        )
    assert [policy.next(0.0, n, RuntimeError()) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, None]


def test_deprecated_policies_are_importable_from_piton() -> None:
    import piton

    with pytest.warns(DeprecationWarning):
        piton.ConstantDelayRetryPolicy()
    with pytest.warns(DeprecationWarning):
        piton.ExponentialBackoffRetryPolicy()


def test_plain_functions_combine_on_either_side() -> None:
    def is_key_error(error: BaseException) -> bool:
        return isinstance(error, KeyError)

    either: Any = is_key_error | retry_if_exception_type(ValueError)
    assert either(KeyError()) and either(ValueError()) and not either(RuntimeError())
    both: Any = is_key_error & retry_if_exception_message(match="x")
    assert both(KeyError("x")) and not both(KeyError("y"))

    def one_second(attempts: int, *, seed: int | None = None) -> float:
        return 1.0

    summed: Any = one_second + wait_fixed(2)
    assert summed(0) == 3.0

    def after_two(attempts: int, elapsed_time: float, *, upcoming_sleep: float = 0.0) -> bool:
        return attempts >= 2

    stop: Any = after_two | stop_after_delay(10)
    assert stop(2, 0.0) and stop(1, 10.0) and not stop(1, 0.0)
    assert retry_if_exception_type(KeyError).exception_types is KeyError
