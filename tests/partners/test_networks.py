"""Tests for :mod:`partners.networks`: CIDR parsing and allowlist matching."""

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from partners.errors import InvalidValueError
from partners.networks import NetworkSet, parse_address, parse_network


@st.composite
def networks(draw):
    """Any IPv4 or IPv6 network, host bits cleared the way ``strict=False`` does."""
    address = draw(st.ip_addresses())
    prefix = draw(st.integers(0, address.max_prefixlen))
    return ipaddress.ip_network(f"{address}/{prefix}", strict=False)


@st.composite
def near_addresses(draw, nets):
    """Addresses at, inside, just outside and far from the drawn networks, of both families."""
    if nets and draw(st.booleans()):
        net = draw(st.sampled_from(nets))
        offset = draw(st.sampled_from([-1, 0, 1])) + draw(
            st.sampled_from([int(net.network_address), int(net.broadcast_address)])
        )
        cls = type(net.network_address)
        if 0 <= offset <= (1 << net.max_prefixlen) - 1:
            return cls(offset)
    return draw(st.ip_addresses())


def oracle(address, nets) -> bool:
    """The ipaddress answer, after unwrapping IPv4-mapped IPv6 as a dual-stack socket reports it."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in n for n in nets if n.version == address.version)


@given(st.data())
def test_membership_agrees_with_ipaddress(data):
    """For any networks and any address, NetworkSet answers exactly what a linear ipaddress scan does."""
    nets = data.draw(st.lists(networks(), max_size=12))
    address = data.draw(near_addresses(nets))
    allowed = NetworkSet(nets)
    assert (address in allowed) == oracle(address, nets)
    assert (str(address) in allowed) == oracle(address, nets)


@given(st.lists(networks(), max_size=8), st.ip_addresses(v=4))
def test_ipv4_mapped_ipv6_matches_the_ipv4_network(nets, address):
    """A v4 peer seen on a dual-stack socket as ::ffff:a.b.c.d matches exactly as its plain IPv4 address."""
    allowed = NetworkSet(nets)
    mapped = ipaddress.IPv6Address(f"::ffff:{address}")
    assert (mapped in allowed) == (address in allowed)
    assert (f"::ffff:{address}" in allowed) == (address in allowed)


def test_ipv4_mapped_address_is_allowed_by_its_ipv4_network():
    """A concrete mapped address is admitted by the IPv4 network and refused by an unrelated one."""
    assert "::ffff:192.0.2.7" in NetworkSet([parse_network("192.0.2.0/24")])
    assert ipaddress.ip_address("::ffff:192.0.2.7") in NetworkSet([parse_network("192.0.2.0/24")])
    assert "::ffff:198.51.100.7" not in NetworkSet([parse_network("192.0.2.0/24")])


def test_string_hosts_and_scope_ids():
    """Hosts given as strings (as Twisted reports them) match, and an IPv6 scope id is ignored."""
    allowed = NetworkSet([parse_network("10.0.0.0/8"), parse_network("fe80::/64")])
    assert "10.1.2.3" in allowed
    assert "11.1.2.3" not in allowed
    assert "fe80::1%eth0" in allowed
    assert "fe80::1" in allowed
    assert "fe81::1%eth0" not in allowed


@pytest.mark.parametrize("host", ["", "localhost", "10.0.0", "10.0.0.256", "::g", "%eth0", "10.0.0.1/8", " 10.0.0.1"])
def test_unparsable_hosts_are_refused(host):
    """A host that is not an IP address is not allowed, and asking never raises."""
    assert host not in NetworkSet([parse_network("0.0.0.0/0"), parse_network("::/0")])
    assert parse_address(host) is None


def test_none_is_refused():
    """A connection without a known source address is never allowed."""
    assert None not in NetworkSet([parse_network("0.0.0.0/0")])


@given(st.text())
def test_matching_arbitrary_text_never_raises(host):
    """Whatever string a transport reports, membership is a plain bool."""
    result = host in NetworkSet([parse_network("0.0.0.0/0"), parse_network("::/0")])
    assert result is (parse_address(host) is not None)


@given(st.ip_addresses())
def test_empty_set_allows_nothing(address):
    """With no networks nobody is allowed, from either family."""
    empty = NetworkSet()
    assert address not in empty
    assert str(address) not in empty
    assert not empty


def test_networks_of_both_families_are_kept_apart():
    """An IPv4 allowlist admits no IPv6 peer and vice versa, even for the catch-all networks."""
    assert "2001:db8::1" not in NetworkSet([parse_network("0.0.0.0/0")])
    assert "192.0.2.1" not in NetworkSet([parse_network("::/0")])


def test_set_keeps_the_networks_as_given():
    """The set keeps its original networks (for display and for the union of allowlists)."""
    nets = [parse_network("10.0.0.0/9"), parse_network("10.128.0.0/9")]
    allowed = NetworkSet(nets)
    assert allowed.networks == tuple(nets)
    assert bool(allowed)
    assert "10.0.0.0/9" in repr(allowed)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("192.0.2.7", "192.0.2.7/32"),
        (" 192.0.2.0/24 ", "192.0.2.0/24"),
        ("2001:DB8::/32", "2001:db8::/32"),
        ("2001:db8:0:0::1", "2001:db8::1/128"),
        ("0.0.0.0/0", "0.0.0.0/0"),
        ("::/0", "::/0"),
    ],
)
def test_parse_network_accepts_and_normalises(text, expected):
    """CIDRs and bare addresses parse to their canonical network (a bare address is a /32 or /128)."""
    assert str(parse_network(text)) == expected


@given(networks())
def test_parse_network_round_trips(net):
    """Any network parses back from its own text unchanged, except IPv4-mapped ones, which become IPv4."""
    mapped = net.network_address.ipv4_mapped if net.version == 6 else None
    if mapped is not None and net.prefixlen >= 96:
        assert parse_network(str(net)) == ipaddress.IPv4Network(f"{mapped}/{net.prefixlen - 96}")
    else:
        assert parse_network(str(net)) == net


def test_ipv4_mapped_entry_matches_the_ipv4_peer_it_describes():
    """An entry written as ::ffff:10.0.0.0/104 allows 10.1.2.3, which is how such a peer is judged."""
    assert parse_network("::ffff:10.0.0.0/104") == ipaddress.IPv4Network("10.0.0.0/8")
    assert "10.1.2.3" in NetworkSet([parse_network("::ffff:10.0.0.0/104")])


@pytest.mark.parametrize(
    ("text", "fix"),
    [
        ("10.0.0.1/8", "did you mean 10.0.0.0/8?"),
        ("192.0.2.77/24", "did you mean 192.0.2.0/24?"),
        ("2001:db8::1/32", "did you mean 2001:db8::/32?"),
    ],
)
def test_parse_network_names_the_fix_for_host_bits(text, fix):
    """Host bits set is refused with the network the admin most likely meant."""
    with pytest.raises(InvalidValueError, match="host bits set") as caught:
        parse_network(text)
    assert fix in str(caught.value)
    assert repr(text) in str(caught.value)


@pytest.mark.parametrize("text", ["", "nonsense", "10.0.0.0/33", "10.0.0.0/-1", "300.0.0.0/8", "2001:db8::/129",
                                  "10.0.0.0/8/8", "10.0.0.0 /8"])
def test_parse_network_refuses_garbage_with_an_example(text):
    """Malformed input is refused with a message showing the expected CIDR form."""
    with pytest.raises(InvalidValueError, match=r"is not an IP network in CIDR form \(e\.g\. 192\.0\.2\.0/24\)"):
        parse_network(text)


@given(st.text())
def test_parse_network_raises_only_invalid_value_error(text):
    """Whatever an admin types, parse_network returns a network or raises InvalidValueError."""
    try:
        result = parse_network(text)
    except InvalidValueError:
        return
    assert isinstance(result, ipaddress.IPv4Network | ipaddress.IPv6Network)
