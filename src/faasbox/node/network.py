"""``network: "egress"``: a veth pair from an instance's network namespace to the host, NAT
out, and nothing else.

Each egress instance (or template: its children share its namespace) gets a /30 of
``EGRESS_POOL`` chosen by its host-unique uid: the host end ``fbx<n>`` is ``.1``, the instance's
``eth0`` is ``.2`` with its default route via ``.1``. One host-wide nftables table ``ip
faasbox`` masquerades the pool, drops whatever an instance sends to the host itself (its input
hook: the host's own addresses, whichever interface they are on; its loopback services are not
routable from outside anyway) unless ``network_allow`` lists the address, and drops traffic
between instances. Inside the namespace (which the instance, unprivileged, cannot change) a
table rejects the private, loopback, link-local, shared, multicast and reserved ranges and the
host's addresses, unless listed in ``network_allow``. IPv4 forwarding is switched on (as
container runtimes do). The pair disappears with the namespace.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import shutil
import subprocess

from faasbox import errors

log = logging.getLogger(__name__)

EGRESS_POOL = ipaddress.IPv4Network("10.200.0.0/16")
SLOTS = EGRESS_POOL.num_addresses // 4
BLOCKED = ("0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
           "172.16.0.0/12", "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15",
           "224.0.0.0/4", "240.0.0.0/4")
HOST_TABLE = f"""
table ip faasbox {{
  set host_allow {{ type ifname . ipv4_addr; flags interval; }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {EGRESS_POOL} oifname != "fbx*" masquerade
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname "fbx*" ct state established,related accept
    iifname . ip daddr @host_allow accept
    iifname "fbx*" drop
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname "fbx*" oifname "fbx*" drop
  }}
}}
"""
_host_ready = False


def egress_unavailable() -> str | None:
    """Why egress cannot be set up here (None: it can)."""
    for tool in ("ip", "nft", "nsenter"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (apt-get install iproute2 nftables util-linux)"
    try:
        subprocess.run(["nft", "list", "tables"], capture_output=True, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"nftables does not work here: {exc}"
    return None


def slot_of(uid: int, uid_base: int) -> int:
    return (uid - uid_base) % SLOTS


def addresses(slot: int) -> tuple[str, str, str]:
    """``(host address, instance address, host interface)`` of a slot."""
    base = int(EGRESS_POOL.network_address) + 4 * slot
    return (str(ipaddress.IPv4Address(base + 1)), str(ipaddress.IPv4Address(base + 2)),
            f"fbx{slot}")


async def _run(args: list[str], stdin: str | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate(None if stdin is None else stdin.encode())
    if proc.returncode != 0:
        raise errors.Unavailable(
            f"network setup failed: {' '.join(args[:3])}: {out.decode(errors='replace')[-500:]}")
    return out.decode(errors="replace")


async def _host_setup() -> None:
    global _host_ready
    if _host_ready:
        return
    listed = await _run(["nft", "list", "tables"])
    if "table ip faasbox" not in listed:
        await _run(["nft", "-f", "-"], HOST_TABLE)
    with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
        f.write("1")
    _host_ready = True


async def _host_addresses() -> list[str]:
    found = json.loads(await _run(["ip", "-j", "-4", "addr", "show"]))
    return [a["local"] for link in found for a in link.get("addr_info", []) if "local" in a]


async def attach(pid: int, slot: int, allow: list[str]) -> None:
    """Give the network namespace of ``pid`` its veth pair, address, route and filter."""
    await _host_setup()
    host_ip, inst_ip, host_if = addresses(slot)
    peer = f"{host_if}p"
    netns = f"--net=/proc/{pid}/ns/net"
    # a stale pair of this slot (an instance that died with its server) goes first
    if await _exists(host_if):
        await _run(["ip", "link", "del", host_if])
    await _run(["ip", "-b", "-"], (
        f"link add {host_if} type veth peer name {peer}\n"
        f"link set {peer} netns {pid}\n"
        f"addr add {host_ip}/30 dev {host_if}\n"
        f"link set {host_if} up\n"))
    await _run(["nsenter", netns, "ip", "-b", "-"], (
        f"link set {peer} name eth0\n"
        f"addr add {inst_ip}/30 dev eth0\n"
        "link set eth0 up\n"
        f"route add default via {host_ip}\n"))
    blocked = ", ".join([*BLOCKED, *await _host_addresses()])
    allowed = ", ".join(allow)
    await _run(["nsenter", netns, "nft", "-f", "-"], f"""
table ip faasbox {{
  chain output {{
    type filter hook output priority filter; policy accept;
    oifname "lo" accept
    {f"ip daddr {{ {allowed} }} accept" if allow else ""}
    ip daddr {{ {blocked} }} reject with icmp type admin-prohibited
  }}
}}
""")
    if allow:
        elements = ", ".join(f'"{host_if}" . {a}' for a in allow)
        await _run(["nft", "add", "element", "ip", "faasbox", "host_allow", f"{{ {elements} }}"])


async def detach(slot: int, allow: list[str]) -> None:
    """Drop what ``attach`` added on the host (the pair goes with the namespace)."""
    _, _, host_if = addresses(slot)
    if allow:
        elements = ", ".join(f'"{host_if}" . {a}' for a in allow)
        try:
            await _run(["nft", "delete", "element", "ip", "faasbox", "host_allow",
                        f"{{ {elements} }}"])
        except errors.Unavailable as exc:
            log.debug("%s", exc.message)


async def _exists(name: str) -> bool:
    proc = await asyncio.create_subprocess_exec(
        "ip", "link", "show", name, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL)
    return await proc.wait() == 0
