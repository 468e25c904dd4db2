"""Where DERIM may connect: device hosts must resolve into networks an admin allowed.

Registering a device makes DERIM open connections to its host; without a limit the API would
be a port scanner and SSRF relay into anything the server can reach. The allow-list is set in
the settings (``allowed_networks``), so only whoever runs the server can widen it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence

from derim.errors import InvalidRequestError
from derim.models.device import DERDevice, Iec61850Connection, ModbusConnection

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


async def check_target(device: DERDevice, allowed: Sequence[Network]) -> None:
    """``InvalidRequestError`` unless every address of the device's host is in ``allowed``."""
    connection = device.connection
    if not isinstance(connection, ModbusConnection | Iec61850Connection):
        return
    if connection.host is None:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            connection.host, connection.port, type=socket.SOCK_STREAM
        )
    except (OSError, ValueError) as exc:  # ValueError: NUL, or a label IDNA cannot encode
        raise InvalidRequestError("connection.host", f"cannot resolve {connection.host!r}") from exc
    addresses = {ipaddress.ip_address(info[4][0]) for info in infos}
    outside = sorted(str(a) for a in addresses if not any(a in net for net in allowed))
    if outside:
        raise InvalidRequestError(
            "connection.host",
            f"{connection.host!r} ({', '.join(outside)}) is outside the networks DERIM may "
            "connect to (allowed_networks)",
        )
