"""The uploader's choker: free slots, tit-for-tat, optimistic unchoke, seed rotation."""

from __future__ import annotations

from collections import Counter
from itertools import pairwise

from edgeswarm.policy.choker import Choker, neighbour, requester
from edgeswarm.policy.engine import host_of
from edgeswarm.policy.tracker import address_group
from edgeswarm.protocol.relay import relay_id

PIECE = 256 * 1024


def run(c: Choker, peers: list[str], seconds: int, contributions: dict[str, int] | None = None, start: int = 0):
    """Every peer asks once a second; contributors send us their bytes first. Yields (now, unchoked, served this tick)."""
    for now in range(start, start + seconds):
        for p, n in (contributions or {}).items():
            c.received(now, p, n)
        served = set()
        for p in peers:
            if c.request(now, p):
                served.add(p)
                c.sent(now, p, PIECE)
        yield now, c.unchoked(now), served


def test_free_slots_unchoke_at_once():
    c = Choker(slots=4)
    assert [c.request(0, p) for p in "abcd"] == [True] * 4
    assert c.unchoked(0) == set("abcd")
    assert all(c.request(0.5, p) for p in "abcd")  # holders keep their slot


def test_new_requester_with_a_free_slot_is_never_refused():
    c = Choker(slots=3)
    admitted = 0
    for now, unchoked, _ in run(c, ["a", "b"], 60, {"a": PIECE}):
        if len(unchoked) < 3:  # one-off askers come and go quietly, freeing the slot again
            assert c.request(now + 0.5, f"new{now}")
            admitted += 1
    assert admitted >= 10


def test_refused_when_full_and_told_when_to_retry():
    c = Choker(slots=2)
    c.received(0, "a", 10 * PIECE)
    c.received(0, "b", 10 * PIECE)
    assert c.request(0, "a") and c.request(0, "b")
    assert not c.request(0, "c")  # full: the first refusal rechokes, and c, who gave nothing, loses to a and b
    assert c.unchoked(0) == {"a", "b"}
    assert not c.request(1, "d")  # between rechokes: no change
    for now in (1, 1.5, 5, 9.99):
        assert c.retry_after(now) >= 1
        assert isinstance(c.retry_after(now), int)


def test_retry_after_is_at_most_the_next_rechoke():
    c = Choker(slots=1, rechoke_interval=10.0, optimistic_interval=30.0)
    assert c.request(0, "a")
    assert not c.request(0, "b")
    assert 1 <= c.retry_after(0) <= 10
    assert 1 <= c.retry_after(9.5) <= 10


def test_retry_after_on_a_fresh_choker():
    assert Choker().retry_after(0) >= 1


def test_tit_for_tat_keeps_the_top_contributors():
    c = Choker(slots=3)  # two regular slots and one optimistic
    peers = list("abcdef")
    for now, unchoked, _ in run(c, peers, 200, {"f": 4 * PIECE, "e": 2 * PIECE, "c": PIECE // 4}):
        assert len(unchoked) <= 3
        if now >= 10:  # from the first rechoke after everyone has asked (e and f ask last at t=0)
            assert {"e", "f"} <= unchoked, now


def test_tit_for_tat_follows_recent_contribution_only():
    c = Choker(slots=3, window=20.0)
    peers = list("abcdef")
    list(run(c, peers, 40, {"a": 4 * PIECE, "b": 4 * PIECE}))
    # a and b stop giving; d and e start.  After the window and a rechoke, d and e hold the regular slots.
    for now, unchoked, _ in run(c, peers, 100, {"d": PIECE, "e": PIECE}, start=40):
        if now >= 40 + 20 + 10:
            assert {"d", "e"} <= unchoked, now


def test_optimistic_slot_rotates_to_every_interested_peer():
    c = Choker(slots=2, optimistic_interval=30.0)
    peers = [f"p{i}" for i in range(8)]
    ever: set[str] = set()
    optimistic_holders = []
    for now, unchoked, _ in run(c, peers, 400, {"p0": PIECE}):
        assert len(unchoked) <= 2
        assert "p0" in unchoked or now == 0
        ever |= unchoked
        optimistic_holders.append(frozenset(unchoked - {"p0"}))
    assert ever == set(peers)  # newcomers who gave nothing all got in through the optimistic slot
    assert len(set(optimistic_holders)) >= 7


def test_optimistic_slot_is_held_for_its_interval():
    c = Choker(slots=2, rechoke_interval=10.0, optimistic_interval=30.0)
    peers = [f"p{i}" for i in range(6)]
    holders = [next(iter(u - {"p0"}), None) for _, u, _ in run(c, peers, 300, {"p0": PIECE})]
    changes = sum(1 for a, b in pairwise(holders[1:]) if a != b)
    assert 300 / 30 - 2 <= changes <= 300 / 30 + 1


def test_a_peer_that_stops_asking_frees_its_slot():
    c = Choker(slots=2)
    assert c.request(0, "a") and c.request(0, "b")
    for now in range(1, 30):
        c.request(now, "a")  # b has gone quiet
    assert "b" not in c.unchoked(30)
    assert c.request(30, "c")


def test_a_seed_rotates_its_slots_among_everyone():
    """Nobody gives a seed anything: it serves whoever it served least lately, so every peer is served often."""
    c = Choker(slots=3)
    peers = [f"p{i}" for i in range(8)]
    served: Counter[str] = Counter()
    for _, _, now_served in run(c, peers, 600):
        served.update(now_served)
    assert set(served) == set(peers)
    assert min(served.values()) >= 0.5 * (sum(served.values()) / len(peers))


def test_a_seed_chokes_everyone_now_and_then():
    c = Choker(slots=4)
    peers = [f"p{i}" for i in range(5)]
    streak: Counter[str] = Counter()
    longest: Counter[str] = Counter()
    for _, unchoked, _ in run(c, peers, 600):
        for p in peers:
            streak[p] = streak[p] + 1 if p in unchoked else 0
            longest[p] = max(longest[p], streak[p])
    assert max(longest.values()) <= 120


def test_a_stated_id_names_a_requester_only_at_its_own_address():
    assert requester("p1", "10.0.0.1") == requester("p1", "10.0.0.1") != requester("p1", "10.0.0.66")
    assert requester("p1", "2001:db8::1") == requester("p1", "2001:db8::2")  # a host gets a whole /64


def test_a_relayed_neighbour_earns_credit_for_what_came_through_its_relay():
    """Its pieces come through its relay's URL, its requests from its own address: one requester, so tit-for-tat
    keeps it among the top contributors (its credit was lost: a relayed peer got only free and optimistic slots)."""
    here = "198.51.100.7"  # the relayed peer's address, as its edge saw it (and as our upload server sees it)
    url = f"http://203.0.113.1:8080/relay/{relay_id(address_group(here), f'addr:{here}', 'nat1')}"
    assert neighbour("nat1", host_of(url)) == requester("nat1", here) != requester("nat1", "198.51.100.8")
    assert neighbour("p2", host_of("http://10.0.0.2:7000")) == requester("p2", "10.0.0.2")
    c = Choker(slots=3)  # two regular slots and one optimistic
    asking = [("a", "10.0.0.1"), ("b", "10.0.0.2"), ("c", "10.0.0.3"), ("d", "10.0.0.4"), ("nat1", here)]
    names = [requester(pid, address) for pid, address in asking]
    credit = {neighbour("nat1", host_of(url)): 4 * PIECE, neighbour("a", host_of("http://10.0.0.1:7000")): PIECE}
    for now, unchoked, _ in run(c, names, 60, credit):
        if now >= 10:
            assert {requester("nat1", here), requester("a", "10.0.0.1")} <= unchoked, now


def test_one_address_holds_at_most_half_the_slots_even_while_others_are_free():
    c = Choker(slots=6)
    admitted = [c.request(0, f"sybil{i}", "10.0.0.66") for i in range(7)]
    assert admitted == [True] * 3 + [False] * 4
    assert c.request(0, "honest", "10.0.0.2")


def test_a_seed_ranks_an_address_by_what_all_its_ids_got_so_new_ids_do_not_jump_the_queue():
    """Ids renewed every 10 s, named to sort first, took a seed's slots from a peer that had waited (adversarial session)."""
    c = Choker(slots=3)  # one regular slot for an address at most (3 // 2), two regular slots, one optimistic
    honest = [f"h{i}" for i in range(3)]
    for now in range(60):
        ids = [f"0000-{now // 10}-{k}" for k in range(4)]  # four fresh ids every 10 s from one address
        for p in ids:
            if c.request(now, p, "10.0.0.66"):
                c.sent(now, p, PIECE)
        for i, p in enumerate(honest):
            if c.request(now, p, f"10.0.1.{i}"):
                c.sent(now, p, PIECE)
        assert sum(1 for p in c.unchoked(now) if p.startswith("0000")) <= 1, now
    served = {p: c._recent(c._gave, p, 59) for p in honest}
    assert all(served.values()), served  # every honest address got pieces in the last window
