"""Hosts as Linux network namespaces, joined by a bridge that lives in a namespace of its own.

Every interface and address is created inside namespaces this module creates (``<tag>-<host>``), so
nothing outside them changes. Each host gets ``eth0`` (one end of a veth pair, address
``10.231.0.<n>/24``); the other end, ``v-<host>``, is a port of the bridge ``br0`` in ``<tag>-br``.
Taking a bridge port down is a cable pulled at the switch: the host keeps its address and its
processes, but no frame reaches or leaves it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

SUBNET = "10.231.0"
CLONE_NEWNET = 0x40000000  # <sched.h>: setns(2) for a network namespace
NETNS_DIR = "/var/run/netns"  # where `ip netns add` mounts the namespaces


class NetError(RuntimeError):
    """A namespace or link could not be set up."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS``; a failure raises :class:`NetError` with ip's own message."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise NetError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done


def ensure_iproute2() -> None:
    """Install Debian's iproute2 when ``ip`` is missing (the suite needs ``ip netns``)."""
    if shutil.which("ip"):
        return
    subprocess.run(["apt-get", "update"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "iproute2"], check=True, stdout=subprocess.DEVNULL)


def netns_permitted() -> str | None:
    """None when this process may create network namespaces, else why not (for skips)."""
    if os.geteuid() != 0:
        return "needs root (ip netns add)"
    if not shutil.which("ip"):
        return "iproute2 (`ip`) is not installed"
    probe = f"rcprobe{os.getpid()}"
    done = ip("netns", "add", probe, check=False)
    if done.returncode != 0:
        return f"ip netns add is not permitted here: {done.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    return None


def _setns(path: str) -> None:
    """Move the calling thread into the network namespace at ``path`` (threads started later follow)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise NetError(f"setns({path}): {os.strerror(error)}")
    finally:
        os.close(fd)


@dataclass
class Host:
    name: str  # short: v-<name> must fit the 15-character interface name limit
    address: str
    netns: str


@dataclass
class Network:
    """The namespaces and links of one run; :meth:`close` deletes all of them (idempotent)."""

    tag: str
    hosts: dict[str, Host] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)

    @property
    def bridge_ns(self) -> str:
        return f"{self.tag}-br"

    def _add_netns(self, name: str) -> None:
        ip("netns", "add", name)
        self.created.append(name)
        ip("-n", name, "link", "set", "lo", "up")

    def up(self, names: Sequence[str]) -> None:
        """Create the bridge namespace and one host namespace per name (addresses .11, .12, ...)."""
        self._add_netns(self.bridge_ns)
        ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        ip("-n", self.bridge_ns, "link", "set", "br0", "up")
        for index, name in enumerate(names):
            host = Host(name, f"{SUBNET}.{11 + index}", f"{self.tag}-{name}")
            self._add_netns(host.netns)
            port = f"v-{name}"
            ip("-n", self.bridge_ns, "link", "add", port, "type", "veth", "peer", "name", "eth0",
               "netns", host.netns)
            ip("-n", self.bridge_ns, "link", "set", port, "master", "br0")
            ip("-n", self.bridge_ns, "link", "set", port, "up")
            ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
            ip("-n", host.netns, "link", "set", "eth0", "up")
            self.hosts[name] = host

    def set_link(self, name: str, up: bool) -> None:
        """Plug or unplug ``name``'s cable at the bridge."""
        ip("-n", self.bridge_ns, "link", "set", f"v-{name}", "up" if up else "down")

    def exec_prefix(self, name: str) -> list[str]:
        """Command prefix that runs a program on host ``name`` (``ip netns exec`` execs it: same pid)."""
        return ["ip", "netns", "exec", self.hosts[name].netns]

    @contextlib.contextmanager
    def inside(self, name: str) -> Iterator[None]:
        """Run this thread (and threads it starts) on host ``name``; back to the original namespace after."""
        original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            _setns(os.path.join(NETNS_DIR, self.hosts[name].netns))
            try:
                yield
            finally:
                _setns(f"/proc/self/fd/{original}")
        finally:
            os.close(original)

    def close(self) -> None:
        """Delete every namespace created (their veth ends go with them)."""
        while self.created:
            ip("netns", "del", self.created.pop(), check=False)
