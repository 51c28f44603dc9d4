# -*- test-case-name: tests.partners.test_networks -*-
"""IP allowlists: parse CIDRs the way admins type them, and match addresses fast.

A connection's source address is checked before any protocol byte is sent, for every connection, so
matching is a binary search over collapsed networks rather than a scan.
"""

import bisect
import ipaddress
from typing import Iterable

from partners.errors import InvalidValueError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_network(text: str) -> IPNetwork:
    """Parse ``10.0.0.0/8``, ``2001:db8::/32`` or a bare address (a /32 or /128).

    :raises InvalidValueError: for malformed input or host bits set (``10.0.0.1/8``), naming the fix.
    """
    value = text.strip()
    try:
        network = ipaddress.ip_network(value, strict=True)
    except ValueError as e:
        try:
            loose = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise InvalidValueError(f"{text!r} is not an IP network in CIDR form (e.g. 192.0.2.0/24)") from None
        raise InvalidValueError(f"{text!r} has host bits set; did you mean {loose}?") from e
    mapped = network.network_address.ipv4_mapped if network.version == 6 else None
    if mapped is not None and network.prefixlen >= 96:
        # Peers arrive unwrapped to IPv4 (parse_address), so store the entry the same way.
        return ipaddress.IPv4Network(f"{mapped}/{network.prefixlen - 96}")
    return network


def parse_address(host: str) -> IPAddress | None:
    """The address a connection came from, IPv4-mapped IPv6 unwrapped; None if unparsable."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class NetworkSet:
    """An immutable set of networks answering ``address in networks`` in O(log n)."""

    def __init__(self, networks: Iterable[IPNetwork] = ()):
        nets = tuple(networks)
        self.networks = nets
        self._families = {}
        for version in (4, 6):
            collapsed = list(ipaddress.collapse_addresses(n for n in nets if n.version == version))
            collapsed.sort(key=lambda n: int(n.network_address))
            starts = [int(n.network_address) for n in collapsed]
            ends = [int(n.broadcast_address) for n in collapsed]
            self._families[version] = (starts, ends)

    def __contains__(self, address: IPAddress | str | None) -> bool:
        if isinstance(address, str):
            address = parse_address(address)
        if address is None:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        starts, ends = self._families[address.version]
        value = int(address)
        i = bisect.bisect_right(starts, value) - 1
        return i >= 0 and value <= ends[i]

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __repr__(self) -> str:
        return f"NetworkSet({', '.join(map(str, self.networks))})"
