"""Child process for the polling benchmark: many simulated SunSpec PV inverters on loopback.

Serves ``--devices`` units (SunSpec map at base 0: common model 1 and inverter model 103),
``--per-gateway`` units behind each TCP port, plus one port that accepts connections and never
answers (a dead device). Prints ``{"gateways": [port, ...], "dead": port}`` on one line, then
serves until its standard input closes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from derim.adapters.sunspec.image import build_image
from derim.sim.server import SimServer, SimUnit

COMMON = {"Mn": "DERIM", "Md": "FARM-PV", "SN": "F0001", "Vr": "1.0", "DA": 1}
INVERTER = {"W": 4750, "W_SF": 0, "PhVphA": 2301, "PhVphB": 2299, "PhVphC": 2300, "V_SF": -1}
INVERTER |= {"Hz": 5001, "Hz_SF": -2, "WH": 1234567, "WH_SF": 0, "St": 4, "A": 2065, "A_SF": -2}


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accept, read and never answer."""
    while await reader.read(1024):
        pass
    writer.close()


async def main(devices: int, per_gateway: int) -> None:
    """Serve the farm until stdin closes."""
    image = build_image([(1, COMMON), (103, INVERTER)])
    servers = []
    for first in range(0, devices, per_gateway):
        units = []
        for unit_id in range(1, min(per_gateway, devices - first) + 1):
            unit = SimUnit(unit_id, len(image) + 8)
            unit.set(0, image)
            units.append(unit)
        servers.append(await SimServer(units).start())
    dead = await asyncio.start_server(silent, "127.0.0.1", 0)
    ports = {"gateways": [s.port for s in servers], "dead": dead.sockets[0].getsockname()[1]}
    print(json.dumps(ports), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for server in servers:
        await server.stop()
    dead.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--per-gateway", type=int, default=200)
    options = parser.parse_args()
    asyncio.run(main(options.devices, options.per_gateway))
