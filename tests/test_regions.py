"""The region map: longest-prefix lookup, file loading, errors a CLI can print."""

from __future__ import annotations

import ipaddress
import json
import time
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from edgeswarm.policy.regions import Region, RegionMap, RegionMapError, ipv4_value
from edgeswarm.roles.announce import load_region_map

MAP = """\
regions:
  - name: east
    isp: att
    networks: [127.1.0.0/16, 10.1.0.0/16]
  - name: west
    isp: verizon
    networks: [127.2.0.0/16]
"""

NESTED = {
    "regions": [
        {"name": "world", "isp": "transit", "networks": ["10.0.0.0/8", "2001:db8::/32"]},
        {"name": "city", "isp": "metro", "networks": ["10.1.0.0/16", "2001:db8:1::/48"]},
        {"name": "block", "isp": "metro", "networks": ["10.1.2.0/24", "2001:db8:1:2::/64"]},
    ]
}

EAST, WEST = Region("east", "att"), Region("west", "verizon")


def write(tmp_path: Path, text: str | bytes, name: str = "regions.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def test_yaml_file_as_documented(tmp_path):
    m = load_region_map(write(tmp_path, MAP))
    assert m.regions == [EAST, WEST]
    assert m.lookup("127.1.0.7") == EAST
    assert m.lookup("10.1.255.255") == EAST
    assert m.lookup("127.2.3.4") == WEST
    assert m.lookup("127.3.0.1") is None


def test_json_file(tmp_path):
    m = load_region_map(write(tmp_path, json.dumps(NESTED), "regions.json"))
    assert [r.name for r in m.regions] == ["world", "city", "block"]
    assert m.lookup("10.1.2.3") == Region("block", "metro")


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        ("10.1.2.3", "block"),
        ("10.1.3.3", "city"),
        ("10.2.0.1", "world"),
        ("10.1.2.255", "block"),
        ("10.1.1.255", "city"),
        ("11.0.0.1", None),
        ("2001:db8:1:2::99", "block"),
        ("2001:db8:1:3::1", "city"),
        ("2001:db8:ffff::1", "world"),
        ("2001:db9::1", None),
        ("::ffff:10.1.2.3", "block"),  # IPv4-mapped, as a dual-stack socket reports it
        ("::ffff:10.9.0.1", "world"),
        ("::a01:203", None),  # IPv4-compatible is not IPv4-mapped
    ],
)
def test_longest_prefix_wins(addr, expected):
    region = RegionMap.from_doc(NESTED).lookup(addr)
    assert (region.name if region else None) == expected


@pytest.mark.parametrize("addr", ["", "not-an-ip", "10.1.2", "10.1.2.3:80", "[2001:db8::1]", "10.1.2.3/32", "2001:db8::g"])
def test_unparsable_address_is_unmapped(addr):
    assert RegionMap.from_doc(NESTED).lookup(addr) is None


def test_zone_id_is_ignored():
    m = RegionMap.from_doc({"regions": [{"name": "lan", "isp": "home", "networks": ["fe80::/10"]}]})
    assert m.lookup("fe80::1%eth0") == Region("lan", "home")


def test_families_do_not_mix():
    m = RegionMap.from_doc(
        {"regions": [{"name": "v4", "isp": "a", "networks": ["0.0.0.0/0"]}, {"name": "v6", "isp": "b", "networks": ["::/0"]}]}
    )
    assert m.lookup("192.0.2.1") == Region("v4", "a")
    assert m.lookup("2001:db8::1") == Region("v6", "b")
    assert m.lookup("::ffff:192.0.2.1") == Region("v4", "a")


def test_an_ipv4_mapped_network_is_its_ipv4_network():
    """Written as ::ffff:127.0.0.0/104 it was taken and never matched a client (clients' mapped addresses are looked
    up as IPv4 ones): an adversarial session."""
    m = RegionMap.from_doc({"regions": [{"name": "lo", "isp": "x", "networks": ["::ffff:127.0.0.0/104"]}]})
    assert m.lookup("127.1.2.3") == m.lookup("::ffff:127.1.2.3") == Region("lo", "x")
    assert m.lookup("128.0.0.1") is None


def test_host_bits_are_cleared_and_repeats_in_one_region_are_fine():
    m = RegionMap.from_doc({"regions": [{"name": "a", "isp": "x", "networks": ["10.1.2.3/16", "10.1.0.0/16"]}]})
    assert m.lookup("10.1.200.1") == Region("a", "x")


def test_an_empty_map_or_an_unknown_key_is_refused():
    """An empty map left every client unmapped, and a key nothing reads was taken without a word (an adversarial
    session); no map at all is one region for all."""
    with pytest.raises(RegionMapError, match="'regions' is empty: list at least one, or give no map"):
        RegionMap.from_doc({"regions": []})
    with pytest.raises(RegionMapError, match="unknown key 'default'"):
        RegionMap.from_doc({"regions": [{"name": "a", "isp": "x", "networks": ["10.0.0.0/8"]}], "default": "a"})
    with pytest.raises(RegionMapError, match=r"region #1: unknown key 'asn' \(an entry has isp, name, networks\)"):
        RegionMap.from_doc({"regions": [{"name": "a", "isp": "x", "networks": ["10.0.0.0/8"], "asn": 7018}]})


def test_regions_property_is_a_copy():
    m = RegionMap.from_doc(NESTED)
    m.regions.clear()
    assert len(m.regions) == 3


def _bad_entry(entry: object) -> str:
    ok = {"name": "east", "isp": "att", "networks": ["10.0.0.0/8"]}
    return json.dumps({"regions": [ok, entry]})


@pytest.mark.parametrize(
    ("content", "needles"),
    [
        ("regions: [\n  - {name: a", ["not valid YAML or JSON: line 2, column "]),
        ("regions:\n  - {name: a, isp: b, networks: [::1/128]}\n", ["line 2, column ", "quote networks that start with ':'"]),
        ("regions:\n  a: [127.0.0.0/8\n  b: :\n", ["not valid YAML or JSON: line 3, column 4: expected ',' or ']', but got ':'"]),
        ("- just\n- a list\n", ["top-level 'regions' list"]),
        ("regions:\n  - {name: a, isp: b, networks: [10.0.0.0/8], isp: c}\n", ["line 2, column 47: 'isp' is given twice"]),
        ('{"regions": [], "regions": [{"name": "a"}]}', ["line 1, column 17: 'regions' is given twice"]),
        ("", ["top-level 'regions' list"]),
        ("regions: east\n", ["top-level 'regions' list"]),
        (_bad_entry("east"), ["region #2", "not a mapping"]),
        (_bad_entry({"isp": "att", "networks": ["10.0.0.0/8"]}), ["region #2", "'name'"]),
        (_bad_entry({"name": 7, "isp": "att", "networks": ["10.0.0.0/8"]}), ["region #2", "'name'"]),
        (_bad_entry({"name": "west", "networks": ["11.0.0.0/8"]}), ["region #2", "(west)", "'isp'"]),
        (_bad_entry({"name": "west", "isp": "vz"}), ["region #2", "(west)", "'networks'"]),
        (_bad_entry({"name": "west", "isp": "vz", "networks": []}), ["region #2", "'networks'"]),
        # loaded, and placed nobody: clients' IPv4-mapped addresses are looked up as IPv4 (an adversarial session)
        (_bad_entry({"name": "west", "isp": "vz", "networks": ["::ffff:127.1.0.0/90"]}), ["IPv4-mapped network shorter than /96"]),
        (_bad_entry({"name": "west", "isp": "vz", "networks": "11.0.0.0/8"}), ["region #2", "'networks'"]),
        (_bad_entry({"name": "west", "isp": "vz", "networks": ["10.0.0.0/33"]}), ["region #2", "(west)", "'10.0.0.0/33'", "not a network"]),
        (_bad_entry({"name": "west", "isp": "vz", "networks": ["banana"]}), ["region #2", "'banana'"]),
        (_bad_entry({"name": "west", "isp": "vz", "networks": [10]}), ["region #2", "10 is not a network"]),
        (_bad_entry({"name": "east", "isp": "other", "networks": ["11.0.0.0/8"]}), ["region #2", "'east' is defined twice"]),
        (
            _bad_entry({"name": "west", "isp": "vz", "networks": ["10.0.0.0/8"]}),
            ["region #2", "(west)", "10.0.0.0/8", "already in region 'east'"],
        ),
    ],
)
def test_bad_file_says_where_and_what(tmp_path, content, needles):
    path = write(tmp_path, content)
    with pytest.raises(RegionMapError) as info:
        load_region_map(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message  # one line: PyYAML's excerpts and carets are not for a log
    for needle in needles:
        assert needle in message


def test_a_key_given_twice_is_refused_as_such_not_as_yaml_that_does_not_parse(tmp_path):
    """Valid YAML with a key twice: "not valid YAML or JSON" sent an operator looking for a syntax error (a docs audit)."""
    path = write(tmp_path, "regions:\n  - {name: a, isp: b, networks: [10.0.0.0/8], isp: c}\n")
    with pytest.raises(RegionMapError) as info:
        load_region_map(path)
    assert str(info.value).endswith(f"{path}: line 2, column 47: 'isp' is given twice"), info.value


def test_missing_file_directory_and_binary_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(RegionMapError, match=r"cannot read region map .*nope\.yaml: No such file"):
        load_region_map(missing)
    with pytest.raises(RegionMapError, match="cannot read region map"):
        load_region_map(tmp_path)
    with pytest.raises(RegionMapError, match="not a text file"):
        load_region_map(write(tmp_path, b"\xff\xfe\x00garbage", "regions.bin"))


def test_error_is_a_value_error():
    """The CLI reports ValueErrors as one line; a RegionMapError must be one."""
    with pytest.raises(ValueError, match="<map>"):
        RegionMap.from_doc(None)


def test_many_prefixes_lookup_stays_fast():
    """Thousands of prefixes: a lookup probes one table per prefix length, not every prefix."""
    nets = [str(ipaddress.ip_network((0x0A000000 + (i << 8), 24))) for i in range(5_000)]
    doc = {"regions": [{"name": f"r{k}", "isp": "x", "networks": nets[k::10]} for k in range(10)]}
    m = RegionMap.from_doc(doc)
    addrs = [str(ipaddress.ip_address(0x0A000000 + (i << 8) + 7)) for i in range(0, 5_000, 2)]
    start = time.perf_counter()
    found = [m.lookup(a) for a in addrs]
    assert time.perf_counter() - start < 1.0
    assert found[:3] == [Region("r0", "x"), Region("r2", "x"), Region("r4", "x")]


@st.composite
def maps_and_address(draw):
    """Distinct networks (IPv4 and IPv6, any length, nested or not) in a few regions, and an address in one of them."""
    nets = draw(
        st.lists(
            st.one_of(
                st.builds(lambda a, n: ipaddress.ip_network((a, n), strict=False), st.integers(0, 2**32 - 1), st.integers(0, 32)),
                st.builds(lambda a, n: ipaddress.ip_network((a, n), strict=False), st.integers(0, 2**128 - 1), st.integers(0, 128)),
                # crowd a small space so nesting is common
                st.builds(
                    lambda a, n: ipaddress.ip_network((0x0A000000 + a, n), strict=False), st.integers(0, 2**16 - 1), st.integers(8, 32)
                ),
            ),
            min_size=1,
            max_size=12,
            unique=True,
        )
    )
    owners = [draw(st.sampled_from(["a", "b", "c"])) for _ in nets]
    target = draw(st.sampled_from(nets))
    addr = target.network_address + draw(st.integers(0, target.num_addresses - 1))
    return nets, owners, addr


@settings(max_examples=50, deadline=None)
@given(maps_and_address())
def test_lookup_matches_brute_force_longest_prefix(case):
    nets, owners, addr = case
    assume(addr.version == 4 or addr.ipv4_mapped is None)  # a mapped address is looked up as IPv4, by design
    doc = {
        "regions": [
            {"name": r, "isp": f"isp-{r}", "networks": [str(n) for n, o in zip(nets, owners, strict=True) if o == r]} for r in "abc"
        ]
    }
    doc["regions"] = [e for e in doc["regions"] if e["networks"]]
    m = RegionMap.from_doc(doc)
    containing = [(n, o) for n, o in zip(nets, owners, strict=True) if n.version == addr.version and addr in n]
    best = max(containing, key=lambda t: t[0].prefixlen)
    assert m.lookup(str(addr)) == Region(best[1], f"isp-{best[1]}")
    if len(containing) == 1:  # inside exactly one configured network: that network's region
        assert m.lookup(str(addr)).name == containing[0][1]
    if addr.version == 4:
        assert m.lookup(f"::ffff:{addr}") == m.lookup(str(addr))


@given(st.one_of(st.ip_addresses().map(str), st.text(alphabet="0123456789.:abcdefx%\x00é ", max_size=20)))
def test_the_fast_ipv4_parse_agrees_with_ipaddress(text):
    """``ipv4_value`` takes only what ``ipaddress`` reads as an IPv4 address and prints back as given, with its value."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        ip = None
    expected = int(ip) if ip is not None and ip.version == 4 and str(ip) == text else None
    assert ipv4_value(text) == expected
