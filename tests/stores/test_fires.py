"""The fire half of the store contract: claims, overlap, leases, last fire and pruning."""

from __future__ import annotations

import anyio
import pytest

from sidecars._records import Outcome
from sidecars.stores import FireClaim, FireLease, FireRequest, FireStatus, Store

from ._support import NOW

pytestmark = pytest.mark.anyio

LEASE = 30.0
T0 = int(NOW)
"""A fire instant: whole epoch seconds."""

CLAIMED, TAKEN, SKIPPED = FireStatus.CLAIMED, FireStatus.TAKEN, FireStatus.SKIPPED


def req(
    fire_at: int = T0,
    handle: str = "h",
    *,
    skip: bool = True,
    max_attempts: int = 3,
) -> FireRequest:
    return FireRequest(
        handle=handle, fire_at=fire_at, skip_if_running=skip, max_attempts=max_attempts
    )


async def claim_one(store: Store, request: FireRequest, *, now: float = NOW) -> FireClaim:
    (answer,) = await store.claim_fires([request], now=now, lease=LEASE)
    assert (answer.handle, answer.fire_at) == (request.handle, request.fire_at)
    return answer


async def claimed(store: Store, request: FireRequest, *, now: float = NOW) -> FireLease:
    """Claim a fire that must be claimable, and return its lease."""
    answer = await claim_one(store, request, now=now)
    assert answer.status is CLAIMED
    return answer.lease()


class TestClaim:
    async def test_new_fire_is_claimed(self, store: Store) -> None:
        """A fire with no row is claimed: attempt 1, a token, a lease of now + lease."""
        answer = await claim_one(store, req())
        assert answer.status is CLAIMED
        assert answer.attempt == 1
        assert answer.token
        assert answer.lease_until == NOW + LEASE

    async def test_empty_batch(self, store: Store) -> None:
        """Claiming no requests answers nothing."""
        assert await store.claim_fires([], now=NOW, lease=LEASE) == []

    async def test_held_fire_is_taken(self, store: Store) -> None:
        """A fire running under an unexpired lease answers TAKEN, without a token."""
        await claimed(store, req())
        answer = await claim_one(store, req(), now=NOW + LEASE - 1)
        assert answer.status is TAKEN
        assert answer.token is None
        assert answer.attempt == 0
        assert answer.lease_until == NOW + LEASE  # when to check back for a dead holder
        with pytest.raises(ValueError, match="not claimed"):
            answer.lease()

    async def test_answers_in_request_order(self, store: Store) -> None:
        """A batch gets one answer per request, in order; a repeated request answers TAKEN."""
        requests = [req(T0 + 2, skip=False), req(T0, "other"), req(T0 + 2), req(T0 + 1, skip=False)]
        answers = await store.claim_fires(requests, now=NOW, lease=LEASE)
        assert [(a.handle, a.fire_at) for a in answers] == [(r.handle, r.fire_at) for r in requests]
        assert [a.status for a in answers] == [CLAIMED, CLAIMED, TAKEN, CLAIMED]

    async def test_each_claim_has_its_own_token(self, store: Store) -> None:
        """Fires claimed in one batch get distinct tokens."""
        answers = await store.claim_fires(
            [req(T0 + i, skip=False) for i in range(5)], now=NOW, lease=LEASE
        )
        assert len({a.token for a in answers}) == 5

    @pytest.mark.parametrize("outcome", [Outcome.OK, Outcome.ERROR, Outcome.TIMEOUT])
    async def test_finished_fire_is_taken(self, store: Store, outcome: Outcome) -> None:
        """A fire that ran, successfully or not, is never claimed again."""
        lease = await claimed(store, req())
        assert await store.finish_fire(lease, outcome=outcome, finished_at=NOW + 1)
        for now in (NOW + 2, NOW + 10 * LEASE):
            assert (await claim_one(store, req(), now=now)).status is TAKEN

    async def test_concurrent_claims_claim_once(self, store: Store) -> None:
        """Many tasks claiming the same fires at the same instant get exactly one CLAIMED each."""
        answers: list[FireClaim] = []
        requests = [req(T0, skip=False), req(T0 + 1, skip=False)]

        async def claim() -> None:
            answers.extend(await store.claim_fires(requests, now=NOW, lease=LEASE))

        async with anyio.create_task_group() as tg:
            for _ in range(30):
                tg.start_soon(claim)
        for fire_at in (T0, T0 + 1):
            statuses = [a.status for a in answers if a.fire_at == fire_at]
            assert sorted(statuses) == [CLAIMED] + [TAKEN] * 29


class TestOverlap:
    async def test_skips_while_another_fire_runs(self, store: Store) -> None:
        """A new fire is recorded as skipped while another of its handle runs unexpired."""
        await claimed(store, req(T0))
        answer = await claim_one(store, req(T0 + 60), now=NOW + 10)
        assert answer.status is SKIPPED
        assert answer.token is None
        # Recorded: asking again later, with nothing running, finds the skipped row.
        assert (await claim_one(store, req(T0 + 60), now=NOW + 10 * LEASE)).status is TAKEN
        assert await store.last_fire("h") == T0 + 60

    async def test_expired_running_fire_does_not_skip(self, store: Store) -> None:
        """A running fire whose lease expired (a dead holder) blocks no other fire."""
        await claimed(store, req(T0))
        answer = await claim_one(store, req(T0 + 60), now=NOW + LEASE)
        assert answer.status is CLAIMED

    async def test_allow_overlap(self, store: Store) -> None:
        """With skip_if_running=False a fire is claimed while another of its handle runs."""
        await claimed(store, req(T0))
        assert (await claim_one(store, req(T0 + 60, skip=False), now=NOW + 1)).status is CLAIMED

    async def test_other_handles_do_not_overlap(self, store: Store) -> None:
        """Only fires of the same handle count as running."""
        await claimed(store, req(T0, "a"))
        assert (await claim_one(store, req(T0, "b"), now=NOW + 1)).status is CLAIMED

    async def test_finished_fire_does_not_skip(self, store: Store) -> None:
        """Once the running fire finished, the next fire of the handle is claimed."""
        lease = await claimed(store, req(T0))
        await store.finish_fire(lease, outcome=Outcome.OK, finished_at=NOW + 1)
        assert (await claim_one(store, req(T0 + 60), now=NOW + 2)).status is CLAIMED

    async def test_skip_within_one_batch(self, store: Store) -> None:
        """A later request of a batch is skipped by a fire an earlier request claimed."""
        answers = await store.claim_fires([req(T0), req(T0 + 1)], now=NOW, lease=LEASE)
        assert [a.status for a in answers] == [CLAIMED, SKIPPED]

    async def test_reclaim_of_expired_fire_skips_while_another_runs(self, store: Store) -> None:
        """An expired fire asked for again while another fire runs is recorded as skipped."""
        await claimed(store, req(T0))
        await claimed(store, req(T0 + 60), now=NOW + LEASE)
        assert (await claim_one(store, req(T0), now=NOW + LEASE + 1)).status is SKIPPED
        assert (await claim_one(store, req(T0), now=NOW + 10 * LEASE)).status is TAKEN

    async def test_reclaim_of_released_fire_skips_while_another_runs(self, store: Store) -> None:
        """A released fire asked for again while another fire runs is recorded as skipped."""
        lease = await claimed(store, req(T0))
        await store.release_fires([lease], now=NOW + 1)
        await claimed(store, req(T0 + 60), now=NOW + 2)
        assert (await claim_one(store, req(T0), now=NOW + 3)).status is SKIPPED


class TestExpiredLease:
    async def test_expired_fire_is_claimed_again(self, store: Store) -> None:
        """At lease_until a running fire is re-claimed: attempt 2, a new token, a new lease."""
        first = await claim_one(store, req())
        second = await claim_one(store, req(), now=NOW + LEASE)
        assert second.status is CLAIMED
        assert second.attempt == 2
        assert second.token != first.token
        assert second.lease_until == NOW + 2 * LEASE

    async def test_last_attempt_expired_is_lease_lost(self, store: Store) -> None:
        """A fire whose lease expired after max_attempts claims answers TAKEN from then on."""
        first = await claimed(store, req(max_attempts=2))
        assert (await claim_one(store, req(max_attempts=2), now=NOW + LEASE)).attempt == 2
        now = NOW + 2 * LEASE
        assert (await claim_one(store, req(max_attempts=2), now=now)).status is TAKEN
        assert (await claim_one(store, req(max_attempts=2), now=now + LEASE)).status is TAKEN
        assert not await store.finish_fire(first, outcome=Outcome.OK, finished_at=now)
        # No longer running: it counts for last_fire and is pruned.
        assert await store.last_fire("h") == T0
        assert await store.prune_fires(before=T0 + 1) == 1

    async def test_single_attempt_fire_is_lost_at_first_expiry(self, store: Store) -> None:
        """With max_attempts=1 a dead holder's fire is never run again."""
        await claimed(store, req(max_attempts=1))
        answer = await claim_one(store, req(max_attempts=1), now=NOW + LEASE)
        assert answer.status is TAKEN

    async def test_lease_lost_does_not_block_the_handle(self, store: Store) -> None:
        """A fire failed as lease_lost is not running: later fires are not skipped."""
        await claimed(store, req(max_attempts=1))
        answers = await store.claim_fires(
            [req(max_attempts=1), req(T0 + 60)], now=NOW + LEASE, lease=LEASE
        )
        assert [a.status for a in answers] == [TAKEN, CLAIMED]


class TestRenew:
    async def test_renew_extends_the_lease(self, store: Store) -> None:
        """A renewed fire is still held past its first lease."""
        lease = await claimed(store, req())
        held = await store.renew_fires([lease], now=NOW + 20, lease=LEASE)
        assert held == {("h", T0)}
        assert (await claim_one(store, req(), now=NOW + LEASE + 1)).status is TAKEN
        assert (await claim_one(store, req(), now=NOW + 20 + LEASE)).status is CLAIMED

    async def test_renew_returns_only_held_fires(self, store: Store) -> None:
        """Wrong tokens, unknown fires and finished fires are missing from the result."""
        kept = await claimed(store, req(T0, "a"))
        done = await claimed(store, req(T0, "b"))
        await store.finish_fire(done, outcome=Outcome.OK, finished_at=NOW + 1)
        leases = [
            kept,
            done,
            FireLease(handle="a", fire_at=T0, token="not-the-token"),
            FireLease(handle="nobody", fire_at=T0, token=kept.token),
        ]
        assert await store.renew_fires(leases, now=NOW + 1, lease=LEASE) == {("a", T0)}

    async def test_empty_renew(self, store: Store) -> None:
        """Renewing nothing holds nothing."""
        assert await store.renew_fires([], now=NOW, lease=LEASE) == set()

    async def test_stale_renew_after_reclaim(self, store: Store) -> None:
        """The first holder's renew after a re-claim neither succeeds nor extends the lease."""
        stale = await claimed(store, req())
        await claimed(store, req(), now=NOW + LEASE)
        assert await store.renew_fires([stale], now=NOW + LEASE + 5, lease=LEASE) == set()
        # The new holder's lease still ends at NOW + 2 * LEASE.
        assert (await claim_one(store, req(), now=NOW + 2 * LEASE)).attempt == 3


class TestFinish:
    async def test_ok_succeeds(self, store: Store) -> None:
        """finish_fire under the lease returns True, once."""
        lease = await claimed(store, req())
        assert await store.finish_fire(lease, outcome=Outcome.OK, finished_at=NOW + 1)
        assert not await store.finish_fire(lease, outcome=Outcome.OK, finished_at=NOW + 2)
        assert await store.renew_fires([lease], now=NOW + 2, lease=LEASE) == set()

    async def test_error_fails_without_retry(self, store: Store) -> None:
        """A failed fire is finished: not claimed again, not running, pruned."""
        lease = await claimed(store, req())
        assert await store.finish_fire(
            lease, outcome=Outcome.ERROR, finished_at=NOW + 1, error="boom"
        )
        assert (await claim_one(store, req(), now=NOW + 10 * LEASE)).status is TAKEN
        assert (await claim_one(store, req(T0 + 1), now=NOW + 2)).status is CLAIMED
        assert await store.prune_fires(before=T0 + 1) == 1

    async def test_stale_finish_after_reclaim(self, store: Store) -> None:
        """The first holder's finish after a re-claim changes nothing; the new holder's applies."""
        stale = await claimed(store, req())
        fresh = await claimed(store, req(), now=NOW + LEASE)
        assert not await store.finish_fire(stale, outcome=Outcome.OK, finished_at=NOW + LEASE)
        assert await store.renew_fires([fresh], now=NOW + LEASE + 1, lease=LEASE) == {("h", T0)}
        assert await store.finish_fire(fresh, outcome=Outcome.OK, finished_at=NOW + LEASE + 2)

    async def test_wrong_token(self, store: Store) -> None:
        """A lease with another token is refused and the holder keeps the fire."""
        lease = await claimed(store, req())
        forged = FireLease(handle="h", fire_at=T0, token="forged")
        assert not await store.finish_fire(forged, outcome=Outcome.OK, finished_at=NOW + 1)
        assert await store.finish_fire(lease, outcome=Outcome.OK, finished_at=NOW + 1)

    async def test_finish_after_release(self, store: Store) -> None:
        """A released fire can no longer be finished under its old lease."""
        lease = await claimed(store, req())
        await store.release_fires([lease], now=NOW + 1)
        assert not await store.finish_fire(lease, outcome=Outcome.OK, finished_at=NOW + 2)


class TestRelease:
    async def test_released_fire_is_claimed_again_same_attempt(self, store: Store) -> None:
        """A released fire is claimed again at once with the attempt number of its release."""
        first = await claim_one(store, req())
        await store.release_fires([first.lease()], now=NOW + 1)
        again = await claim_one(store, req(), now=NOW + 2)
        assert again.status is CLAIMED
        assert again.attempt == 1
        assert again.token != first.token
        assert again.lease_until == NOW + 2 + LEASE

    async def test_release_after_reclaim_keeps_attempt(self, store: Store) -> None:
        """Releasing a second attempt and claiming again gives attempt 2 again."""
        await claimed(store, req())
        second = await claimed(store, req(), now=NOW + LEASE)
        await store.release_fires([second], now=NOW + LEASE + 1)
        assert (await claim_one(store, req(), now=NOW + LEASE + 2)).attempt == 2

    async def test_release_does_not_spend_an_attempt(self, store: Store) -> None:
        """With max_attempts=1, a released fire still gets its one run."""
        lease = await claimed(store, req(max_attempts=1))
        await store.release_fires([lease], now=NOW + 1)
        again = await claimed(store, req(max_attempts=1), now=NOW + 2)
        assert await store.finish_fire(again, outcome=Outcome.OK, finished_at=NOW + 3)

    async def test_released_fire_does_not_skip(self, store: Store) -> None:
        """A released fire is not running: the next fire of the handle is claimed."""
        lease = await claimed(store, req(T0))
        await store.release_fires([lease], now=NOW + 1)
        assert (await claim_one(store, req(T0 + 60), now=NOW + 2)).status is CLAIMED

    async def test_stale_release_after_reclaim(self, store: Store) -> None:
        """The first holder's release after a re-claim leaves the new holder's claim intact."""
        stale = await claimed(store, req())
        fresh = await claimed(store, req(), now=NOW + LEASE)
        await store.release_fires([stale], now=NOW + LEASE + 1)
        assert (await claim_one(store, req(), now=NOW + LEASE + 2)).status is TAKEN
        assert await store.finish_fire(fresh, outcome=Outcome.OK, finished_at=NOW + LEASE + 3)

    async def test_release_of_finished_fire(self, store: Store) -> None:
        """Releasing a fire that already finished changes nothing."""
        lease = await claimed(store, req())
        await store.finish_fire(lease, outcome=Outcome.OK, finished_at=NOW + 1)
        await store.release_fires([lease], now=NOW + 2)
        assert (await claim_one(store, req(), now=NOW + 3)).status is TAKEN
        assert await store.last_fire("h") == T0

    async def test_empty_release(self, store: Store) -> None:
        """Releasing nothing is a no-op."""
        await store.release_fires([], now=NOW)


class TestLastFire:
    async def test_no_fires(self, store: Store) -> None:
        """A handle without fire rows has no last fire."""
        assert await store.last_fire("h") is None

    async def test_latest_instant_of_the_handle(self, store: Store) -> None:
        """The latest fire instant counts whatever its state (here running and skipped)."""
        await claimed(store, req(T0))
        assert (await claim_one(store, req(T0 + 60))).status is SKIPPED
        await claimed(store, req(T0 + 600, "other"))
        assert await store.last_fire("h") == T0 + 60
        assert await store.last_fire("other") == T0 + 600
        assert isinstance(await store.last_fire("h"), int)

    async def test_released_fires_excluded(self, store: Store) -> None:
        """A released fire is not a last fire until it is claimed again."""
        await claimed(store, req(T0, skip=False))
        late = await claimed(store, req(T0 + 60, skip=False))
        await store.release_fires([late], now=NOW + 1)
        assert await store.last_fire("h") == T0
        await claimed(store, req(T0 + 60), now=NOW + LEASE)
        assert await store.last_fire("h") == T0 + 60

    async def test_only_released_fires(self, store: Store) -> None:
        """A handle whose only fire was released has no last fire."""
        lease = await claimed(store, req())
        await store.release_fires([lease], now=NOW + 1)
        assert await store.last_fire("h") is None


class TestPrune:
    async def test_prunes_old_finished_rows_only(self, store: Store) -> None:
        """Rows before ``before`` go unless running (even expired); newer rows stay."""
        finished = await claimed(store, req(T0, "done"))
        await store.finish_fire(finished, outcome=Outcome.OK, finished_at=NOW + 1)
        await claimed(store, req(T0, "live"))
        await claimed(store, req(T0, "dead"))  # its lease expires; still running
        await claimed(store, req(T0, "skips"))
        assert (await claim_one(store, req(T0 + 1, "skips"))).status is SKIPPED
        released = await claimed(store, req(T0, "released"))
        await store.release_fires([released], now=NOW + 1)
        await claimed(store, req(T0 + 100, "new"))
        new_done = await claimed(store, req(T0 + 200, "done"))
        await store.finish_fire(new_done, outcome=Outcome.OK, finished_at=NOW + 2)

        assert await store.prune_fires(before=T0 + 100) == 3  # done, skips@T0+1, released
        assert await store.last_fire("done") == T0 + 200
        assert await store.last_fire("live") == T0
        assert await store.last_fire("dead") == T0
        assert await store.last_fire("skips") == T0
        assert await store.last_fire("new") == T0 + 100
        assert await store.prune_fires(before=T0 + 100) == 0

    async def test_pruned_instant_can_be_claimed_again(self, store: Store) -> None:
        """Pruning forgets a fire: the store claims its instant anew (callers prune late)."""
        lease = await claimed(store, req())
        await store.finish_fire(lease, outcome=Outcome.OK, finished_at=NOW + 1)
        assert await store.prune_fires(before=T0 + 1) == 1
        assert await store.last_fire("h") is None
        assert (await claim_one(store, req(), now=NOW + 2)).attempt == 1

    async def test_prunes_many_rows(self, store: Store) -> None:
        """Thousands of rows are pruned in one call and all counted."""
        answers = await store.claim_fires([req(T0 + i) for i in range(2500)], now=NOW, lease=LEASE)
        assert [a.status for a in answers].count(SKIPPED) == 2499
        await store.finish_fire(answers[0].lease(), outcome=Outcome.OK, finished_at=NOW + 1)
        assert await store.prune_fires(before=T0 + 2500) == 2500
        assert await store.last_fire("h") is None
