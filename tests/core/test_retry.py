"""Retry policies: tenacity-style building blocks, retry_info, and retried steps."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from typing import Any

import pytest

from piton import (
    ConstantDelayRetryPolicy,
    Context,
    Event,
    ExponentialBackoffRetryPolicy,
    RetryInfo,
    RetryPolicy,
    StartEvent,
    StopEvent,
    Workflow,
    retry_policy,
    step,
)
from piton.retry import (
    retry_all,
    retry_always,
    retry_any,
    retry_if_exception,
    retry_if_exception_message,
    retry_if_exception_type,
    retry_if_not_exception_message,
    retry_if_not_exception_type,
    retry_never,
    stop_after_attempt,
    stop_after_delay,
    stop_before_delay,
    stop_never,
    wait_chain,
    wait_exponential,
    wait_exponential_jitter,
    wait_fixed,
    wait_incrementing,
    wait_none,
    wait_random,
    wait_random_exponential,
)


class Flaky(Exception):
    pass


class Fatal(Exception):
    pass


# --- steps with retries ------------------------------------------------------------------


async def test_retry_until_success_with_retry_info_progression() -> None:
    infos: list[RetryInfo] = []

    class W(Workflow):
        @step(
            retry_policy=retry_policy(
                retry=retry_if_exception_type(Flaky),
                wait=wait_fixed(0.01),
                stop=stop_after_attempt(5),
            )
        )
        async def shaky(self, ev: StartEvent, ctx: Context) -> StopEvent:
            info = ctx.retry_info()
            infos.append(info)
            if info.retry_number < 2:
                raise Flaky(f"attempt {info.retry_number}")
            return StopEvent(result="third time lucky")

    assert await W().run() == "third time lucky"
    assert [i.retry_number for i in infos] == [0, 1, 2]
    assert infos[0].last_exception is None
    assert infos[0].last_failed_at is None
    assert infos[0].elapsed_seconds == 0.0
    assert isinstance(infos[1].last_exception, Flaky)
    assert str(infos[1].last_exception) == "attempt 0"
    assert str(infos[2].last_exception) == "attempt 1"
    assert isinstance(infos[2].last_failed_at, datetime)
    assert infos[2].last_failed_at.tzinfo is not None
    assert infos[2].elapsed_seconds >= 0.015  # two waits of 0.01 s


async def test_retries_exhausted_raise_the_last_error() -> None:
    calls = 0

    class W(Workflow):
        @step(
            retry_policy=retry_policy(
                retry=retry_if_exception_type(Flaky), wait=wait_none(), stop=stop_after_attempt(3)
            )
        )
        async def always_fails(self, ev: StartEvent) -> StopEvent:
            nonlocal calls
            calls += 1
            raise Flaky(f"call {calls}")

    with pytest.raises(Flaky, match="call 3"):
        await W().run()
    assert calls == 3  # stop_after_attempt(3) counts the first run


async def test_non_retryable_error_fails_at_once() -> None:
    calls = 0

    class W(Workflow):
        @step(
            retry_policy=retry_policy(
                retry=retry_if_exception_type(Flaky), wait=wait_none(), stop=stop_after_attempt(5)
            )
        )
        async def picky(self, ev: StartEvent) -> StopEvent:
            nonlocal calls
            calls += 1
            raise Fatal("no retry for me")

    with pytest.raises(Fatal):
        await W().run()
    assert calls == 1


async def test_non_event_return_is_not_retried() -> None:
    calls = 0

    class W(Workflow):
        @step(retry_policy=retry_policy(wait=wait_none(), stop=stop_after_attempt(5)))
        async def sloppy(self, ev: StartEvent) -> StopEvent:
            nonlocal calls
            calls += 1
            return 42  # type: ignore[return-value]

    from piton import WorkflowRuntimeError

    with pytest.raises(WorkflowRuntimeError, match="sloppy"):
        await W().run()
    assert calls == 1


async def test_constant_delay_retry_policy() -> None:
    stamps: list[float] = []

    class W(Workflow):
        @step(retry_policy=retry_policy(wait=wait_fixed(0.03), stop=stop_after_attempt(3)))
        async def flaky(self, ev: StartEvent) -> StopEvent:
            stamps.append(time.monotonic())
            raise Flaky("x")

    with pytest.raises(Flaky):
        await W().run()
    assert len(stamps) == 3
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    assert all(gap >= 0.025 for gap in gaps), gaps


async def test_sync_step_retries() -> None:
    calls = 0

    class W(Workflow):
        @step(retry_policy=retry_policy(wait=wait_fixed(0.001), stop=stop_after_attempt(4)))
        def flaky(self, ev: StartEvent, ctx: Context) -> StopEvent:
            nonlocal calls
            calls += 1
            if ctx.retry_info().retry_number < 3:
                raise Flaky("again")
            return StopEvent(result=calls)

    assert await W().run() == 4


async def test_retry_of_a_step_timeout() -> None:
    calls = 0

    class W(Workflow):
        @step(
            timeout=0.03,
            retry_policy=retry_policy(
                retry=retry_if_exception_type(TimeoutError),
                wait=wait_none(),
                stop=stop_after_attempt(3),
            ),
        )
        async def slow_then_fast(self, ev: StartEvent) -> StopEvent:
            nonlocal calls
            calls += 1
            if calls == 1:
                await asyncio.sleep(5)
            return StopEvent(result=calls)

    assert await W().run() == 2


async def test_retry_info_outside_a_step_is_an_error() -> None:
    from piton import WorkflowRuntimeError

    class W(Workflow):
        @step
        async def only(self, ev: StartEvent) -> StopEvent:
            return StopEvent()

    handler = W().run()
    await handler
    with pytest.raises(WorkflowRuntimeError, match="retry_info"):
        handler.ctx.retry_info()


async def test_custom_policy_object() -> None:
    seen: list[tuple[int, str]] = []

    class TwoTries:
        def next(
            self,
            elapsed_time: float,
            attempts: int,
            error: BaseException,
            *,
            seed: int | None = None,
        ) -> float | None:
            seen.append((attempts, str(error)))
            return 0.0 if attempts < 2 else None

    assert isinstance(TwoTries(), RetryPolicy)

    class W(Workflow):
        @step(retry_policy=TwoTries())
        async def flaky(self, ev: StartEvent) -> StopEvent:
            raise Flaky(f"n{len(seen)}")

    with pytest.raises(Flaky, match="n1"):
        await W().run()
    assert seen == [(1, "n0"), (2, "n1")]


async def test_retrying_step_sends_are_not_duplicated() -> None:
    class Part(Event):
        n: int

    class W(Workflow):
        @step(retry_policy=retry_policy(wait=wait_fixed(0.001), stop=stop_after_attempt(3)))
        async def fan(self, ev: StartEvent, ctx: Context) -> Part | None:
            ctx.send_event(Part(n=1))
            if ctx.retry_info().retry_number == 0:
                raise Flaky("fail after sending")
            ctx.send_event(Part(n=2))
            return None

        @step
        async def join(self, ev: Part, ctx: Context) -> StopEvent | None:
            got = ctx.collect_events(ev, [Part, Part])
            return None if got is None else StopEvent(result=[p.n for p in got])

    # a failed attempt's sends are dropped; the retry sends both again
    assert await W().run() == [1, 2]


# --- policy arithmetic -----------------------------------------------------------------


def test_policy_next_counts_failures() -> None:
    policy = retry_policy(wait=wait_fixed(2), stop=stop_after_attempt(3))
    err = Flaky()
    assert policy.next(0.0, 1, err) == 2.0
    assert policy.next(0.0, 2, err) == 2.0
    assert policy.next(0.0, 3, err) is None


def test_policy_defaults_match_llama_index_workflows() -> None:
    policy = retry_policy()
    assert policy.next(0.0, 1, ValueError()) == 5.0
    assert policy.next(0.0, 2, ValueError()) == 5.0
    assert policy.next(0.0, 3, ValueError()) is None


def test_policy_retry_condition_gates_everything() -> None:
    policy = retry_policy(retry=retry_if_exception_type((KeyError, Flaky)), wait=wait_none())
    assert policy.next(0.0, 1, KeyError()) == 0.0
    assert policy.next(0.0, 1, Flaky()) == 0.0
    assert policy.next(0.0, 1, Fatal()) is None


def test_constant_delay_policy_numbers() -> None:
    with pytest.warns(DeprecationWarning, match="ConstantDelayRetryPolicy is deprecated"):
        policy = ConstantDelayRetryPolicy(maximum_attempts=2, delay=timedelta(seconds=1.5))
    assert policy.next(0.0, 1, Flaky()) == 1.5
    assert policy.next(0.0, 2, Flaky()) is None


def test_exponential_backoff_policy_numbers() -> None:
    with pytest.warns(DeprecationWarning, match="ExponentialBackoffRetryPolicy is deprecated"):
        policy = ExponentialBackoffRetryPolicy(
            maximum_attempts=5, initial_delay=1, multiplier=2, max_delay=5, jitter=False
        )
    assert [policy.next(0.0, n, Flaky()) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, None]
    with pytest.warns(DeprecationWarning, match="ExponentialBackoffRetryPolicy is deprecated"):
        jittered = ExponentialBackoffRetryPolicy(maximum_attempts=5, initial_delay=1, max_delay=5)
    for n in range(1, 5):
        delay = jittered.next(0.0, n, Flaky(), seed=n)
        assert delay is not None and 0.0 <= delay <= min(2 ** (n - 1), 5)
        assert jittered.next(0.0, n, Flaky(), seed=n) == delay  # same seed, same delay


def test_wait_fixed_and_none() -> None:
    assert wait_fixed(3)(0) == 3.0
    assert wait_fixed(3)(10) == 3.0
    assert wait_fixed(timedelta(milliseconds=250))(0) == 0.25
    assert wait_none()(4) == 0.0


def test_wait_exponential() -> None:
    w = wait_exponential(multiplier=1, exp_base=2)
    assert [w(n) for n in range(5)] == [1, 2, 4, 8, 16]
    capped = wait_exponential(multiplier=0.5, max=3, min=1)
    assert [capped(n) for n in range(5)] == [1, 1, 2, 3, 3]
    assert wait_exponential(multiplier=1, max=10)(10_000) == 10  # no overflow


def test_wait_incrementing() -> None:
    w = wait_incrementing(start=1, increment=2, max=6)
    assert [w(n) for n in range(5)] == [1, 3, 5, 6, 6]


def test_wait_random_is_bounded_and_seeded() -> None:
    w = wait_random(min=1, max=2)
    values = [w(0, seed=s) for s in range(50)]
    assert all(1 <= v <= 2 for v in values)
    assert len(set(values)) > 1
    assert w(0, seed=7) == w(0, seed=7)


def test_wait_random_exponential_and_jitter() -> None:
    w = wait_random_exponential(multiplier=1, max=8)
    for n in range(6):
        assert 0 <= w(n, seed=n) <= min(2**n, 8)
    j = wait_exponential_jitter(initial=1, max=10, jitter=1)
    for n in range(4):
        assert 2**n <= j(n, seed=n) <= min(2**n + 1, 10)


def test_wait_chain_and_sum() -> None:
    chain = wait_chain(wait_fixed(1), wait_fixed(2), wait_fixed(5))
    assert [chain(n) for n in range(5)] == [1, 2, 5, 5, 5]
    combined = wait_fixed(1) + wait_fixed(0.5)
    assert combined(0) == 1.5
    assert sum([wait_fixed(1), wait_fixed(2)])(0) == 3  # type: ignore[operator]


def test_stop_conditions() -> None:
    assert not stop_after_attempt(3)(2, 0.0)
    assert stop_after_attempt(3)(3, 0.0)
    assert not stop_after_delay(10)(1, 9.9)
    assert stop_after_delay(10)(1, 10.0)
    assert not stop_before_delay(10)(1, 5.0, upcoming_sleep=4.0)
    assert stop_before_delay(10)(1, 5.0, upcoming_sleep=5.0)
    assert not stop_never(10**6, 10.0**6)
    either = stop_after_attempt(5) | stop_after_delay(1)
    assert either(1, 2.0) and either(5, 0.0) and not either(1, 0.0)
    both = stop_after_attempt(5) & stop_after_delay(1)
    assert both(5, 2.0) and not both(5, 0.0)


def test_stop_before_delay_in_a_policy_uses_the_upcoming_sleep() -> None:
    policy = retry_policy(wait=wait_fixed(4), stop=stop_before_delay(10))
    assert policy.next(5.0, 1, Flaky()) == 4.0
    assert policy.next(6.0, 2, Flaky()) is None


def test_retry_conditions() -> None:
    assert retry_if_exception_type(ValueError)(ValueError())
    assert not retry_if_exception_type(ValueError)(KeyError())
    assert retry_if_not_exception_type(ValueError)(KeyError())
    assert not retry_if_not_exception_type(ValueError)(ValueError())
    assert retry_if_exception(lambda e: "retry" in str(e))(Flaky("please retry"))
    assert retry_if_exception_message(message="exact")(Flaky("exact"))
    assert not retry_if_exception_message(message="exact")(Flaky("exactly"))
    assert retry_if_exception_message(match=r"rate.?limit")(Flaky("rate limit hit"))
    assert retry_if_not_exception_message(message="fatal")(Flaky("transient"))
    assert retry_always(Flaky()) and not retry_never(Flaky())
    combo: Any = retry_if_exception_type(KeyError) | retry_if_exception_message(message="m")
    assert combo(KeyError()) and combo(Flaky("m")) and not combo(Flaky("n"))
    both: Any = retry_if_exception_type(Flaky) & retry_if_exception_message(message="m")
    assert both(Flaky("m")) and not both(Flaky("n"))
    assert retry_any(retry_never, retry_always)(Flaky())
    assert not retry_all(retry_never, retry_always)(Flaky())
    with pytest.raises(TypeError):
        retry_if_exception_message()
