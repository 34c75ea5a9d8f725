"""Which webhook targets the server refuses, and how a delivery is pinned to the address it
checked (DNS rebinding)."""

from __future__ import annotations

import asyncio

import pytest

from faasbox.delivery.webhooks import WebhookRefused, _private, pinned, resolve_check


@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "0.0.0.0",
    "100.100.100.200",  # shared address space (carrier NAT; a cloud's metadata service)
    "100.64.0.1", "192.0.2.1", "198.18.0.1", "224.0.0.1", "255.255.255.255",
    "::1", "::", "fe80::1", "fc00::1", "ff02::1",
    "::ffff:127.0.0.1", "::ffff:169.254.169.254",  # IPv4-mapped
    "2002:a9fe:a9fe::",  # 6to4 of 169.254.169.254
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
])
def test_internal_addresses_are_private(address: str) -> None:
    assert _private(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_are_not(address: str) -> None:
    assert not _private(address)


def test_a_delivery_goes_to_the_address_checked_under_the_hosts_name() -> None:
    url, headers, ext = pinned("https://hooks.example.com:8443/in?x=1", "93.184.216.34")
    assert url == "https://93.184.216.34:8443/in?x=1"
    assert headers == {"Host": "hooks.example.com:8443"}
    assert ext == {"sni_hostname": "hooks.example.com"}  # the certificate is checked for it
    url, headers, ext = pinned("http://hooks.example.com/in", "2606:4700:4700::1111")
    assert url == "http://[2606:4700:4700::1111]/in"
    assert headers == {"Host": "hooks.example.com"} and ext == {}


def test_resolving_to_loopback_is_refused_and_the_address_is_not_told() -> None:
    """``localhost`` is refused by name; ``127.1`` and ``0x7f.1`` are not address literals
    to Python but resolve to loopback: refused when resolved, without saying which internal
    address was found."""
    with pytest.raises(WebhookRefused) as err:
        asyncio.run(resolve_check("http://localhost:80/x", allow_private=False))
    assert "internal" in str(err.value)
    for url in ("http://127.1/x", "http://0x7f.1:8080/x"):
        with pytest.raises(WebhookRefused) as err:
            asyncio.run(resolve_check(url, allow_private=False))
        assert "private address" in str(err.value) and "127.0.0.1" not in str(err.value)
    assert asyncio.run(resolve_check("http://127.0.0.1/x", allow_private=True)) is None


def test_an_ip_literal_resolves_to_itself() -> None:
    assert asyncio.run(resolve_check("http://93.184.216.34:9/x", allow_private=False)) == (
        "93.184.216.34")
