"""Retry policies: pure values that decide whether, and when, a failed step runs again.

Build one in the tenacity style and give it to a step::

    @step(retry_policy=retry_policy(
        retry=retry_if_exception_type(TimeoutError),
        wait=wait_exponential(multiplier=0.5, max=30),
        stop=stop_after_attempt(5),
    ))

Any object with ``next(elapsed_time, attempts, error, *, seed=None) -> float | None``
is a policy: it returns the delay before the next attempt, or ``None`` to give up.
``attempts`` counts failures so far (1 after the first failure). Jittered waits draw
from a generator seeded by the caller, so a replayed run takes the same decisions.

The numbers are llama-index-workflows' (and tenacity's): a wait strategy's ``n`` is the
number of retries before this one, so ``wait_exponential(multiplier=1, exp_base=2)``
waits 1, 2, 4, 8 s after the first, second, third and fourth failure.
"""

from __future__ import annotations

import random
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol, Self, overload, runtime_checkable

Seconds = float | int | timedelta


def _secs(value: Seconds) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _rng(seed: int | None) -> random.Random:
    return random.Random(seed)


@dataclass(frozen=True)
class RetryInfo:
    """What ``ctx.retry_info()`` returns inside a step.

    ``retry_number`` is 0 on the first attempt, 1 on the first retry, and so on.
    """

    retry_number: int
    elapsed_seconds: float
    last_exception: BaseException | None
    last_failed_at: datetime | None


@runtime_checkable
class RetryPolicy(Protocol):
    """Anything with this ``next`` method can be a step's ``retry_policy``."""

    def next(
        self, elapsed_time: float, attempts: int, error: BaseException, *, seed: int | None = None
    ) -> float | None: ...


# --- retry conditions -------------------------------------------------------------


class RetryCondition:
    """Decides whether an exception is worth another attempt. Combine with ``|`` and ``&``."""

    def __call__(self, error: BaseException) -> bool:
        raise NotImplementedError

    def __or__(self, other: Callable[[BaseException], bool]) -> RetryCondition:
        return retry_any(self, other)

    def __and__(self, other: Callable[[BaseException], bool]) -> RetryCondition:
        return retry_all(self, other)

    def __ror__(self, other: Callable[[BaseException], bool]) -> RetryCondition:
        return retry_any(other, self)  # a plain predicate on the left

    def __rand__(self, other: Callable[[BaseException], bool]) -> RetryCondition:
        return retry_all(other, self)


class retry_if_exception(RetryCondition):
    def __init__(self, predicate: Callable[[BaseException], bool]) -> None:
        self.predicate = predicate

    def __call__(self, error: BaseException) -> bool:
        return bool(self.predicate(error))


class retry_if_exception_type(retry_if_exception):
    def __init__(
        self, exception_types: type[BaseException] | tuple[type[BaseException], ...] = Exception
    ) -> None:
        self.exception_types = exception_types
        super().__init__(lambda e: isinstance(e, exception_types))


class retry_if_not_exception_type(retry_if_exception):
    def __init__(
        self, exception_types: type[BaseException] | tuple[type[BaseException], ...] = Exception
    ) -> None:
        self.exception_types = exception_types
        super().__init__(lambda e: not isinstance(e, exception_types))


retry_unless_exception_type = retry_if_not_exception_type


class retry_if_exception_message(RetryCondition):
    def __init__(self, message: str | None = None, match: str | re.Pattern[str] | None = None):
        if (message is None) == (match is None):
            raise TypeError("retry_if_exception_message takes exactly one of message= or match=")
        self.message = message
        self.pattern = re.compile(match) if isinstance(match, str) else match

    def __call__(self, error: BaseException) -> bool:
        if self.message is not None:
            return str(error) == self.message
        assert self.pattern is not None
        # anywhere in the message, as llama-index-workflows does (tenacity anchors at the start)
        return self.pattern.search(str(error)) is not None


class retry_if_not_exception_message(retry_if_exception_message):
    def __call__(self, error: BaseException) -> bool:
        return not super().__call__(error)


class retry_if_exception_cause_type(RetryCondition):
    """Retry when an exception in the error's ``__cause__`` chain (``raise X from Y``) is
    one of ``exception_types``. The error itself is not looked at, nor ``__context__``
    (implicit chaining), as in tenacity and llama-index-workflows."""

    def __init__(
        self, exception_types: type[BaseException] | tuple[type[BaseException], ...] = Exception
    ) -> None:
        self.exception_types = exception_types

    def __call__(self, error: BaseException) -> bool:
        seen: set[int] = set()
        cause = error.__cause__
        while cause is not None and id(cause) not in seen:  # a cycle ends the walk
            if isinstance(cause, self.exception_types):
                return True
            seen.add(id(cause))
            cause = cause.__cause__
        return False


class retry_any(RetryCondition):
    def __init__(self, *conditions: Callable[[BaseException], bool]) -> None:
        self.conditions = conditions

    def __call__(self, error: BaseException) -> bool:
        return any(c(error) for c in self.conditions)


class retry_all(RetryCondition):
    def __init__(self, *conditions: Callable[[BaseException], bool]) -> None:
        self.conditions = conditions

    def __call__(self, error: BaseException) -> bool:
        return all(c(error) for c in self.conditions)


class _ConstantCondition(RetryCondition):
    """``retry_always`` / ``retry_never``: usable as they are (``retry=retry_always``) and
    called with no argument (``retry=retry_always()``, as llama-index-workflows writes it,
    where they are classes); the call gives the same condition back."""

    def __init__(self, name: str, answer: bool) -> None:
        self.__name__ = self.__qualname__ = name
        self.answer = answer

    @overload
    def __call__(self) -> Self: ...
    @overload
    def __call__(self, error: BaseException) -> bool: ...
    def __call__(self, error: BaseException | None = None) -> bool | Self:
        return self if error is None else self.answer

    def __repr__(self) -> str:
        return f"{self.__name__}()"


retry_always = _ConstantCondition("retry_always", True)
retry_never = _ConstantCondition("retry_never", False)


# --- wait strategies ----------------------------------------------------------------


class WaitStrategy:
    """Seconds to wait before retry number ``attempts`` (0 for the first retry).

    Strategies add up: ``wait_fixed(1) + wait_random(0, 1)``.
    """

    def __call__(self, attempts: int, *, seed: int | None = None) -> float:
        raise NotImplementedError

    def __add__(self, other: WaitStrategy) -> WaitStrategy:
        return wait_combine(self, other)

    def __radd__(self, other: object) -> WaitStrategy:
        if other == 0:
            return self  # lets sum() work
        if callable(other):  # a plain wait function on the left
            return wait_combine(other, self)  # type: ignore[arg-type]
        return NotImplemented


class wait_fixed(WaitStrategy):
    def __init__(self, wait: Seconds) -> None:
        self.wait = _secs(wait)

    def __call__(self, attempts: int, *, seed: int | None = None) -> float:
        return self.wait


class wait_none(wait_fixed):
    def __init__(self) -> None:
        super().__init__(0)


class wait_exponential(WaitStrategy):
    """``multiplier * exp_base ** n`` for retry ``n`` (0 for the first), kept within
    ``[min, max]``. Parameter order and the 60 s default cap are llama-index-workflows'."""

    def __init__(
        self,
        multiplier: float = 1,
        exp_base: float = 2,
        max: Seconds = 60,  # noqa: A002 - tenacity's name
        min: Seconds = 0,  # noqa: A002
    ) -> None:
        self.multiplier, self.max, self.exp_base, self.min = (
            multiplier,
            _secs(max),
            exp_base,
            _secs(min),
        )

    def __call__(self, attempts: int, *, seed: int | None = None) -> float:
        try:
            value = self.multiplier * (self.exp_base**attempts)
        except OverflowError:
            value = float("inf")
        return max(0.0, self.min, min(value, self.max))


class wait_incrementing(WaitStrategy):
    def __init__(
        self,
        start: Seconds = 0,
        increment: Seconds = 100,
        max: Seconds = float("inf"),  # noqa: A002
    ) -> None:
        self.start, self.increment, self.max = _secs(start), _secs(increment), _secs(max)

    def __call__(self, attempts: int, *, seed: int | None = None) -> float:
        return max(0.0, min(self.start + self.increment * attempts, self.max))


class wait_random(WaitStrategy):
    def __init__(self, min: Seconds = 0, max: Seconds = 1) -> None:  # noqa: A002
        self.min, self.max = _secs(min), _secs(max)

    def __call__(self, attempts: int, *, seed: int | None = None) -> float:
        return _rng(seed).uniform(self.min, self.max)


class wait_exponential_jitter(WaitStrategy):
    """``initial * exp_base ** n`` plus a random ``[0, jitter]``, at most ``max``."""

    def __init__(
        self,
        initial: float = 1,
        exp_base: float = 2,
        max: Seconds = 60,  # noqa: A002
        jitter: float = 1,
    ) -> None:
        self.initial, self.max, self.exp_base, self.jitter = initial, _secs(max), exp_base, jitter

    def __call__(self, attempts: int, *, seed: int | None = None) -> float:
        try:
            value = min(self.initial * self.exp_base**attempts, self.max)
        except OverflowError:
            value = self.max
        return max(0.0, min(value + _rng(seed).uniform(0, self.jitter), self.max))


class wait_random_exponential(wait_exponential):
    """Full jitter: a random delay between ``min`` and what ``wait_exponential`` gives."""

    def __call__(self, attempts: int, *, seed: int | None = None) -> float:
        high = super().__call__(attempts)
        return _rng(seed).uniform(self.min, high)


def wait_full_jitter(
    multiplier: float = 1,
    exp_base: float = 2,
    max: Seconds = 60,  # noqa: A002
    min: Seconds = 0,  # noqa: A002
) -> wait_random_exponential:
    """Another name for :class:`wait_random_exponential`."""
    return wait_random_exponential(multiplier=multiplier, exp_base=exp_base, max=max, min=min)


class wait_chain(WaitStrategy):
    """The n-th strategy for the n-th retry; the last one repeats."""

    def __init__(self, *strategies: WaitStrategy) -> None:
        if not strategies:
            raise ValueError("wait_chain needs at least one strategy")
        self.strategies = strategies

    def __call__(self, attempts: int, *, seed: int | None = None) -> float:
        index = min(max(attempts, 0), len(self.strategies) - 1)
        return self.strategies[index](attempts, seed=seed)


class wait_combine(WaitStrategy):
    def __init__(self, *strategies: WaitStrategy) -> None:
        self.strategies = strategies

    def __call__(self, attempts: int, *, seed: int | None = None) -> float:
        return sum(s(attempts, seed=seed) for s in self.strategies)


# --- stop conditions ----------------------------------------------------------------


class StopCondition:
    """Decides when to give up. Combine with ``|`` and ``&``."""

    def __call__(self, attempts: int, elapsed_time: float, *, upcoming_sleep: float = 0.0) -> bool:
        raise NotImplementedError

    def __or__(self, other: StopCondition) -> StopCondition:
        return stop_any(self, other)

    def __and__(self, other: StopCondition) -> StopCondition:
        return stop_all(self, other)

    def __ror__(self, other: StopCondition) -> StopCondition:
        return stop_any(other, self)  # a plain stop function on the left

    def __rand__(self, other: StopCondition) -> StopCondition:
        return stop_all(other, self)


class stop_after_attempt(StopCondition):
    """Stop once ``max_attempt_number`` attempts (the first run included) have failed."""

    def __init__(self, max_attempt_number: int) -> None:
        self.max_attempt_number = max_attempt_number

    def __call__(self, attempts: int, elapsed_time: float, *, upcoming_sleep: float = 0.0) -> bool:
        return attempts >= self.max_attempt_number


class stop_after_delay(StopCondition):
    def __init__(self, max_delay: Seconds) -> None:
        self.max_delay = _secs(max_delay)

    def __call__(self, attempts: int, elapsed_time: float, *, upcoming_sleep: float = 0.0) -> bool:
        return elapsed_time >= self.max_delay


class stop_before_delay(StopCondition):
    def __init__(self, max_delay: Seconds) -> None:
        self.max_delay = _secs(max_delay)

    def __call__(self, attempts: int, elapsed_time: float, *, upcoming_sleep: float = 0.0) -> bool:
        return elapsed_time + upcoming_sleep >= self.max_delay


class stop_any(StopCondition):
    def __init__(self, *conditions: StopCondition) -> None:
        self.conditions = conditions

    def __call__(self, attempts: int, elapsed_time: float, *, upcoming_sleep: float = 0.0) -> bool:
        return any(
            c(attempts, elapsed_time, upcoming_sleep=upcoming_sleep) for c in self.conditions
        )


class stop_all(StopCondition):
    def __init__(self, *conditions: StopCondition) -> None:
        self.conditions = conditions

    def __call__(self, attempts: int, elapsed_time: float, *, upcoming_sleep: float = 0.0) -> bool:
        return all(
            c(attempts, elapsed_time, upcoming_sleep=upcoming_sleep) for c in self.conditions
        )


class _StopNever(StopCondition):
    """``stop_never``: usable as it is and called with no argument (``stop_never()``, as
    llama-index-workflows writes it); the call gives the same condition back."""

    def __init__(self) -> None:
        self.__name__ = self.__qualname__ = "stop_never"

    @overload
    def __call__(self) -> Self: ...
    @overload
    def __call__(
        self, attempts: int, elapsed_time: float, *, upcoming_sleep: float = 0.0
    ) -> bool: ...
    def __call__(
        self,
        attempts: int | None = None,
        elapsed_time: float = 0.0,
        *,
        upcoming_sleep: float = 0.0,
    ) -> bool | Self:
        return self if attempts is None else False

    def __repr__(self) -> str:
        return "stop_never()"


stop_never = _StopNever()


# --- policies -----------------------------------------------------------------------


class ComposedRetryPolicy:
    """A policy made of a retry condition, a wait strategy and a stop condition."""

    def __init__(
        self,
        retry: Callable[[BaseException], bool],
        wait: WaitStrategy,
        stop: StopCondition,
    ) -> None:
        self.retry, self.wait, self.stop = retry, wait, stop

    def next(
        self, elapsed_time: float, attempts: int, error: BaseException, *, seed: int | None = None
    ) -> float | None:
        if not self.retry(error):
            return None
        delay = self.wait(max(attempts - 1, 0), seed=seed)
        if self.stop(attempts, elapsed_time, upcoming_sleep=delay):
            return None
        return delay

    def __repr__(self) -> str:
        return f"retry_policy(retry={self.retry!r}, wait={self.wait!r}, stop={self.stop!r})"


def retry_policy(
    retry: Callable[[BaseException], bool] | None = None,
    wait: WaitStrategy | None = None,
    stop: StopCondition | None = None,
) -> ComposedRetryPolicy:
    """Build a policy. Defaults: retry any exception, 5 s apart, 3 attempts in all."""
    return ComposedRetryPolicy(
        retry=retry if retry is not None else retry_if_exception_type(Exception),
        wait=wait if wait is not None else wait_fixed(5),
        stop=stop if stop is not None else stop_after_attempt(3),
    )


def ConstantDelayRetryPolicy(maximum_attempts: int = 3, delay: Seconds = 5) -> ComposedRetryPolicy:  # noqa: N802
    """At most ``maximum_attempts`` attempts in all, ``delay`` seconds apart.

    Deprecated, as in llama-index-workflows: use
    ``retry_policy(wait=wait_fixed(delay), stop=stop_after_attempt(n))``.
    """
    warnings.warn(
        "ConstantDelayRetryPolicy is deprecated, use "
        "retry_policy(wait=wait_fixed(delay), stop=stop_after_attempt(n)) instead",
        DeprecationWarning,
        stacklevel=2,
    )
    return retry_policy(wait=wait_fixed(delay), stop=stop_after_attempt(maximum_attempts))


def ExponentialBackoffRetryPolicy(  # noqa: N802
    maximum_attempts: int = 5,
    initial_delay: Seconds = 1,
    multiplier: float = 2,
    max_delay: Seconds = 60,
    jitter: bool = True,
) -> ComposedRetryPolicy:
    """At most ``maximum_attempts`` attempts in all, the delay growing by ``multiplier``.

    Deprecated, as in llama-index-workflows: use
    ``retry_policy(wait=wait_exponential(...), stop=stop_after_attempt(n))``, or
    ``wait_random_exponential`` / ``wait_exponential_jitter`` for jitter.
    """
    warnings.warn(
        "ExponentialBackoffRetryPolicy is deprecated, use "
        "retry_policy(wait=wait_exponential(...), stop=stop_after_attempt(n)) instead",
        DeprecationWarning,
        stacklevel=2,
    )
    wait: WaitStrategy = wait_exponential(
        multiplier=_secs(initial_delay), exp_base=multiplier, max=max_delay
    )
    if jitter:
        wait = wait_random_exponential(
            multiplier=_secs(initial_delay), exp_base=multiplier, max=max_delay
        )
    return retry_policy(wait=wait, stop=stop_after_attempt(maximum_attempts))


__all__ = sorted(
    [
        "ComposedRetryPolicy",
        "ConstantDelayRetryPolicy",
        "ExponentialBackoffRetryPolicy",
        "RetryCondition",
        "RetryInfo",
        "RetryPolicy",
        "StopCondition",
        "WaitStrategy",
        "retry_all",
        "retry_always",
        "retry_any",
        "retry_if_exception",
        "retry_if_exception_cause_type",
        "retry_if_exception_message",
        "retry_if_exception_type",
        "retry_if_not_exception_message",
        "retry_if_not_exception_type",
        "retry_never",
        "retry_policy",
        "retry_unless_exception_type",
        "stop_after_attempt",
        "stop_after_delay",
        "stop_all",
        "stop_any",
        "stop_before_delay",
        "stop_never",
        "wait_chain",
        "wait_combine",
        "wait_exponential",
        "wait_exponential_jitter",
        "wait_fixed",
        "wait_full_jitter",
        "wait_incrementing",
        "wait_none",
        "wait_random",
        "wait_random_exponential",
    ]
)
