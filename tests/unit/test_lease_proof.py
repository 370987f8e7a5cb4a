"""The proof of ownership before a push, on a clock of the test's own: a renewal proves the lease
only if it came back inside it, and a push gets no more time than that lease has left."""

from __future__ import annotations

import pytest

from ec2_runner.pipeline import KILL_SECONDS, Heartbeat, LeaseProof
from shared.store import LeaseLostError

LEASE = 10.0
MARGIN = 2.0  # the lease counts for LEASE - MARGIN = 8 s from when its renewal was sent


class Clock:
    """Monotonic seconds that move only when told."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def beat_taking(clock: Clock, seconds: float) -> Heartbeat:
    """A heartbeat (its thread not started) whose renewals take ``seconds`` each."""

    def renew() -> None:
        clock.now += seconds

    return Heartbeat(renew, interval=3.0, lease_seconds=LEASE, margin=MARGIN, since=clock(), clock=clock)


def test_a_renewal_that_comes_back_inside_its_lease_proves_it_until_sent_plus_the_lease_less_the_margin() -> (
    None
):
    # given
    clock = Clock()
    beat = beat_taking(clock, 1.5)
    # when
    proof = beat.renew_now()
    # then: the lease is counted from when the renewal was sent, not from when it came back
    assert isinstance(proof, LeaseProof)
    assert proof.deadline == pytest.approx(100.0 + LEASE - MARGIN)
    assert proof.remaining() == pytest.approx(LEASE - MARGIN - 1.5)
    assert not beat.is_lost()


@pytest.mark.parametrize("took", [LEASE - MARGIN, LEASE, LEASE + 5])
def test_a_renewal_that_comes_back_after_its_lease_proves_nothing(took: float) -> None:
    """The write succeeded, but the lease it wrote has passed (or is about to): no proof, the lease
    counts as lost, and the reason says how long the renewal took."""
    clock = Clock()
    beat = beat_taking(clock, took)
    assert beat.renew_now() is None
    assert beat.is_lost() and f"{took:.1f} s" in beat.reason


def test_the_push_timeout_is_what_remains_of_the_proven_lease_less_the_time_a_kill_takes() -> None:
    # given: a proof made with 6.5 s left
    clock = Clock()
    proof = beat_taking(clock, 1.5).renew_now()
    assert proof is not None
    # then: the push may take what remains, less the kill's allowance, and less as time goes by
    assert proof.push_timeout() == pytest.approx(LEASE - MARGIN - 1.5 - KILL_SECONDS)
    clock.now += 4.0
    assert proof.push_timeout() == pytest.approx(LEASE - MARGIN - 5.5 - KILL_SECONDS)
    assert proof.push_timeout() <= proof.remaining()
    # and: none once the lease's counted time is over
    clock.now = proof.deadline - KILL_SECONDS
    assert proof.push_timeout() <= 0


def test_a_renewal_is_no_proof_once_the_heartbeat_has_given_the_lease_up() -> None:
    clock = Clock()
    beat = beat_taking(clock, 0.1)
    clock.now += LEASE  # silent for a whole lease: lost before the renewal is even sent
    assert beat.renew_now() is None
    assert "no lease renewal succeeded" in beat.reason


def test_a_renewal_refused_by_the_store_is_no_proof() -> None:
    def renew() -> None:
        raise LeaseLostError("t")

    clock = Clock()
    beat = Heartbeat(renew, interval=3.0, lease_seconds=LEASE, margin=MARGIN, since=clock(), clock=clock)
    assert beat.renew_now() is None
    assert beat.is_lost() and "another runner" in beat.reason


def test_a_lease_given_up_on_purpose_stays_lost_with_its_reason() -> None:
    clock = Clock()
    beat = beat_taking(clock, 0.1)
    beat.lose("the push ran out of time")
    assert beat.is_lost() and beat.reason == "the push ran out of time"
    assert beat.renew_now() is None
