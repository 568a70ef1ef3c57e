"""TCP ports for the servers and rendezvous that tests start a moment after choosing the port."""
import random
import socket

_LOWEST = 10000  # below: well-known and registered services' ports


def _ephemeral_start():
    """The first port of the kernel's ephemeral range (Linux: /proc; elsewhere the IANA range)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as handle:
            return int(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 49152


def unclaimed_ports(count=1):
    """`count` distinct TCP ports that are free now and outside the kernel's ephemeral range.

    A port from bind(("", 0)) is free when chosen, but it comes from the range the kernel hands out to every
    connect() and bind(0) of every process. In the seconds before the test's server or rendezvous binds it, a run
    going on beside it (a reference torchrun, its ranks' gloo sockets) may take it, and a torchrun whose c10d
    store port is taken joins the other run's store as a client and waits there without a word. The kernel never
    gives out a port below its ephemeral range by itself."""
    top = _ephemeral_start()
    if top - _LOWEST < 1000:  # an unusual range: nothing to choose from outside it
        return _kernel_ports(count)
    chosen, draw = [], random.SystemRandom()
    while len(chosen) < count:
        port = draw.randrange(_LOWEST, top)
        if port in chosen:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("", port))
            except OSError:
                continue
        chosen.append(port)
    return chosen


def unclaimed_port():
    return unclaimed_ports(1)[0]


def _kernel_ports(count):
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("", 0))
            socks.append(sock)
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()
