"""The claim bounds an edge applies to announces, and whom the usage report blames (sans-IO)."""

from __future__ import annotations

import pytest

from edgeswarm.policy.claims import ClaimPolicy, overclaimers
from edgeswarm.roles.announce import TrackerService

MiB = 1 << 20
SIZE = 8 * MiB
NO_STATS = {"edge": 0, "peer_same_region": 0, "peer_other_region": 0}


def bound(
    policy: ClaimPolicy, now: float, usage: dict, *, peer="p", link="10.0.0.1", held=SIZE, neighbours=2, stats=NO_STATS, leaving=False
):
    return policy.bound(now, peer, link, "c", SIZE, held, neighbours, usage, stats, leaving=leaving)


def test_honest_claims_pass_untouched():
    cut = bound(ClaimPolicy(), 0, {"from_this_edge": 3 * MiB, "from_peers": 5 * MiB, "uploaded": 6 * MiB})
    assert cut.usage == {"from_this_edge": 3 * MiB, "from_peers": 5 * MiB, "uploaded": 6 * MiB} and cut.excess == 0


def test_from_peers_is_bounded_by_the_content_over_a_peers_life():
    policy = ClaimPolicy()
    assert bound(policy, 0, {"from_peers": 6 * MiB}).usage["from_peers"] == 6 * MiB
    cut = bound(policy, 1, {"from_peers": 6 * MiB})
    assert cut.usage["from_peers"] == 2 * MiB and cut.excess == 4 * MiB
    assert bound(policy, 2, {"from_peers": 1}).usage["from_peers"] == 0


def test_uploaded_is_bounded_by_what_it_holds_times_its_neighbours():
    policy = ClaimPolicy()
    cut = bound(policy, 0, {"uploaded": 10 << 30}, held=3 * MiB, neighbours=2)
    assert cut.usage["uploaded"] == 6 * MiB and cut.excess == (10 << 30) - 6 * MiB
    assert bound(policy, 1, {"uploaded": 1}, held=0).usage["uploaded"] == 0  # holds nothing: uploaded nothing


def test_uploaded_counts_the_peers_that_joined_since_its_last_announce_and_left_before_it():
    """A seeder whose three downloaders came and went one after another between two of its announces: each took the
    whole content from it.  Bounded by the peers present at its announce (itself and none), it was cut to one copy and
    flagged, and each downloader flagged for a download nobody backed (an adversarial session)."""
    policy = ClaimPolicy()
    bound(policy, 0, {"uploaded": 0}, peer="seed", neighbours=1)
    for i, t in enumerate((10, 20, 30)):  # each joins, downloads from the seed, and stops before the seed's next announce
        link = f"10.0.1.{i}"
        bound(policy, t, {"from_peers": 0}, peer=f"get{i}", link=link, neighbours=1)
        bound(policy, t + 5, {"from_peers": SIZE}, peer=f"get{i}", link=link, neighbours=1)
        policy.forget(f"get{i}", "c")
    cut = bound(policy, 300, {"uploaded": 3 * SIZE}, peer="seed", neighbours=1)  # alone again: the swarm is itself
    assert cut.usage["uploaded"] == 3 * SIZE and cut.excess == 0
    cut = bound(policy, 600, {"uploaded": 2 * SIZE}, peer="seed", neighbours=1)  # nobody came since: one, who may have just left
    assert cut.usage["uploaded"] == SIZE and cut.excess == SIZE
    for i in range(10):  # ids the claimant churns itself, behind its own link: they served it nobody
        bound(policy, 700 + i, {}, peer=f"sybil{i}", neighbours=1)
        policy.forget(f"sybil{i}", "c")
    assert bound(policy, 900, {"uploaded": 5 * SIZE}, peer="seed", neighbours=1).usage["uploaded"] == SIZE


def test_a_link_carries_at_most_max_rate_whatever_ids_it_uses():
    policy = ClaimPolicy(max_rate=1 * MiB, window=4)  # a 4 MiB bucket that refills at 1 MiB/s
    granted = sum(bound(policy, 0, {"from_peers": 1 * MiB}, peer=f"fresh{i}").usage["from_peers"] for i in range(10))
    assert granted == 4 * MiB  # fresh peer ids bring no fresh budget
    assert bound(policy, 2, {"from_peers": 5 * MiB}, peer="again").usage["from_peers"] == 2 * MiB
    assert bound(policy, 2, {"from_peers": 1 * MiB}, link="10.0.0.2").usage["from_peers"] == 1 * MiB  # another link
    assert bound(policy, 2, {"uploaded": 4 * MiB}).usage["uploaded"] == 4 * MiB  # the other direction has its own


def test_stats_are_at_most_the_content_each_and_only_new_excess_counts():
    policy = ClaimPolicy()
    lie = {"edge": 0, "peer_same_region": 10 << 30, "peer_other_region": 5}
    cut = bound(policy, 0, {}, stats=lie)
    assert cut.stats == {"edge": 0, "peer_same_region": SIZE, "peer_other_region": 5}
    assert cut.excess == (10 << 30) - SIZE
    assert bound(policy, 1, {}, stats=lie).excess == 0  # cumulative: the same lie is cut, not counted twice
    honest = {"edge": 2 * MiB, "peer_same_region": 7 * MiB, "peer_other_region": 1 * MiB}  # an endgame piece twice
    assert bound(ClaimPolicy(), 0, {}, stats=honest).stats == honest


def test_expire_forgets_silent_peers_and_full_buckets():
    policy = ClaimPolicy(max_rate=MiB, window=10, keep=10)
    bound(policy, 0, {"from_peers": MiB})
    bound(policy, 8, {"from_peers": 5 * MiB}, peer="q")
    policy.expire(10.5)
    assert policy.state_size() == {
        "claim_tallies": 1,
        "claim_links": 1,
        "claim_copies": 1,
        "claim_contents": 1,
    }  # q's; the link is full again at 13
    policy.expire(20)
    assert policy.state_size() == {"claim_tallies": 0, "claim_links": 0, "claim_copies": 0, "claim_contents": 0}


@pytest.mark.parametrize(
    ("claims", "flagged"),
    [
        ({"alice": (4 * MiB, 4 * MiB), "bob": (4 * MiB, 4 * MiB)}, set()),  # they agree
        ({"liar": (10 << 30, 0), "alice": (4 * MiB, 3 * MiB), "bob": (0, 1 * MiB)}, {"liar"}),  # a one-sided claim
        ({"liar": (16 * MiB, 8 * MiB), "alice": (4 * MiB, 4 * MiB)}, {"liar"}),  # both sides, more up than down
        ({"seed": (8 * MiB, 0), "leech": (0, 8 * MiB), "ghost": (0, 50 * MiB)}, {"ghost"}),  # downloads nobody sent
        ({"up": (100 * MiB, 0), "a": (0, 60 * MiB), "b": (0, 32 * MiB)}, set()),  # 92 of 100 confirmed: within 10 %
        # a liar claiming a little less than an honest downloader: either claim alone is the excess, so both are flagged
        # (the largest alone was, the honest one: an adversarial session's framing)
        ({"alice": (54 * MiB, 0), "bob": (0, 54 * MiB), "mallory": (0, 51 * MiB)}, {"bob", "mallory"}),
    ],
)
def test_a_disagreement_flags_the_claimants_nobody_backs(claims, flagged):
    assert overclaimers(claims, 0.1, MiB) == flagged


def test_blame_stops_once_the_rest_agree_and_never_swaps_sides():
    assert overclaimers({"up": (100 * MiB, 0), "a": (0, 60 * MiB), "b": (0, 32 * MiB)}, 0.01, 0) == {"up"}


def test_a_tally_outlives_the_bucket_window_until_the_tracker_forgets_the_peer():
    policy = ClaimPolicy(max_rate=MiB, window=10, keep=30)
    bound(policy, 0, {"from_peers": SIZE})
    policy.expire(20)  # silent for longer than the window, still live on the tracker
    assert bound(policy, 20, {"from_peers": SIZE}).excess == SIZE, "a live peer's life-long from_peers bound was forgotten"


def test_an_edges_claim_window_is_one_interval_and_a_fifth_not_the_trackers_ttl():
    service = TrackerService(None, "prefer", interval=300)
    assert (service.claims.window, service.claims.keep) == (360, service.tracker.ttl)
    assert service.claims.max_rate * service.claims.window <= 45e9  # 1 Gbit/s for 360 s, not 112 GB over a 900 s ttl


def test_id_churn_brings_no_new_copies_to_claim():
    """One address announcing, stopping and coming back under 100 fresh ids: at most ids_per_link copies count."""
    policy = ClaimPolicy(ids_per_link=4)
    lie = {"edge": 0, "peer_same_region": SIZE, "peer_other_region": 0}
    cuts = [bound(policy, i, {"from_peers": SIZE}, stats=lie, peer=f"sybil{i}") for i in range(100)]
    assert sum(c.usage["from_peers"] for c in cuts) == 4 * SIZE
    assert sum(c.stats["peer_same_region"] for c in cuts) == 4 * SIZE
    assert sum(c.excess for c in cuts) == 96 * 2 * SIZE  # every byte cut is flagged
    other = bound(policy, 100, {"from_peers": SIZE}, stats=lie, peer="neighbour", link="10.0.0.2")
    assert other.usage["from_peers"] == SIZE and other.excess == 0  # another owner is not touched


def test_a_peer_that_restarts_its_counters_is_booked_again_within_its_owners_copies():
    policy = ClaimPolicy(ids_per_link=2)
    assert bound(policy, 0, {}, stats={"edge": SIZE}).stats["edge"] == SIZE
    assert bound(policy, 1, {}, stats={"edge": SIZE // 2}).stats["edge"] == SIZE // 2  # a restart: counted afresh
    assert bound(policy, 2, {}, stats={"edge": SIZE}).stats["edge"] == SIZE // 2 + SIZE // 2  # the owner's second copy is spent


def test_expire_keeps_what_was_used_since_whatever_order_it_came_in():
    """expire reads each table from its oldest use and stops at the first live entry: a tally or bucket used again
    must move behind the others, or a silent one behind it would be kept for good."""
    policy = ClaimPolicy(max_rate=MiB, window=10, keep=10)
    bound(policy, 0, {"from_peers": MiB}, peer="a", link="10.0.0.1")
    bound(policy, 1, {"from_peers": MiB}, peer="b", link="10.0.0.2")
    bound(policy, 5, {"from_peers": MiB}, peer="a", link="10.0.0.1")  # a and its link again: newer than b's
    policy.expire(11.5)
    assert policy.state_size() == {"claim_tallies": 1, "claim_links": 1, "claim_copies": 1, "claim_contents": 1}  # a's, not b's
    assert bound(policy, 12, {"from_peers": SIZE}, peer="a", link="10.0.0.1").excess > 0, "a's tally was forgotten"
    policy.expire(30)
    assert policy.state_size() == {"claim_tallies": 0, "claim_links": 0, "claim_copies": 0, "claim_contents": 0}


def test_stops_and_churned_ids_of_another_address_raise_no_seeders_bound_past_a_links_ids():
    """100 stops of ids that never joined, or one id started and stopped 100 times, from a second address, let a
    seeder alone in its swarm book 100 copies unflagged (a review)."""
    policy = ClaimPolicy(ids_per_link=16)
    bound(policy, 0, {"uploaded": 0}, peer="seed", neighbours=1)
    for i in range(100):
        bound(policy, 1 + i / 100, {}, peer=f"ghost{i}", link="10.0.0.9", neighbours=1, leaving=True)
        policy.forget(f"ghost{i}", "c")
    assert bound(policy, 2, {"uploaded": 100 * SIZE}, peer="seed", neighbours=1).usage["uploaded"] == SIZE
    for _ in range(100):
        bound(policy, 3, {}, peer="cycler", link="10.0.0.9", neighbours=1)
        bound(policy, 3, {}, peer="cycler", link="10.0.0.9", neighbours=1, leaving=True)
        policy.forget("cycler", "c")
    assert bound(policy, 4, {"uploaded": 100 * SIZE}, peer="seed", neighbours=1).usage["uploaded"] == 17 * SIZE  # 1 + 16
