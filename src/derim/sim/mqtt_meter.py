"""Simulated meters behind an edge gateway that publishes JSON over MQTT (the shipped
``gateway_json`` mapping's layout): ``site/<site>/meter/<meter>/telemetry`` every ``step_s``.

Each meter follows a household load curve (morning and evening peaks, W import counted as
negative power) with a little noise, its energy counters integrating it.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from derim.tasks import cancel_and_wait

SITE = "demo"


@dataclass
class _Meter:
    name: str
    peak_w: float
    import_wh: float = 2_000_000.0
    export_wh: float = 0.0


class MqttMeterSim:
    """Publishes readings of ``meters`` (names) to the broker at ``url`` every ``step_s``."""

    def __init__(
        self,
        url: str,
        meters: Sequence[str] = ("house-2", "house-3"),
        *,
        step_s: float = 1.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        seed: int = 11,
    ) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 1883
        self.step_s = step_s
        self.clock = clock
        self.meters = [_Meter(name, 3000.0 + 1500.0 * i) for i, name in enumerate(meters)]
        self._rng = random.Random(seed)
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id="derim-sim-meters")
        self._task: asyncio.Task[None] | None = None

    def device_ids(self) -> list[str]:
        """The DERIM device ids the ``gateway_json`` mapping gives these meters."""
        return [f"{SITE}.{meter.name}" for meter in self.meters]

    async def start(self) -> MqttMeterSim:
        """Connect (paho's own thread keeps the connection) and start publishing."""
        await asyncio.to_thread(self._client.connect, self.host, self.port)
        self._client.loop_start()
        self._task = asyncio.create_task(self._run(), name="derim-sim-mqtt-meters")
        return self

    async def stop(self) -> None:
        """Stop publishing and disconnect."""
        task, self._task = self._task, None
        await cancel_and_wait(task)
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)

    async def _run(self) -> None:
        while True:
            self.publish_once()
            await asyncio.sleep(self.step_s)

    def publish_once(self) -> None:
        """Publish one reading of every meter (QoS 1)."""
        moment = self.clock()
        for meter in self.meters:
            body = self.reading(meter, moment)
            topic = f"site/{SITE}/meter/{meter.name}/telemetry"
            self._client.publish(topic, json.dumps(body), qos=1)

    def reading(self, meter: _Meter, moment: datetime) -> dict[str, object]:
        """One gateway JSON reading of ``meter`` at ``moment`` (W, var, V, A, Hz, Wh)."""
        hour = moment.hour + moment.minute / 60
        shape = 0.25 + 0.5 * math.exp(-((hour - 7.5) ** 2) / 2) + math.exp(-((hour - 19) ** 2) / 4)
        load_w = meter.peak_w * shape * (1 + 0.05 * self._rng.uniform(-1, 1))
        meter.import_wh += load_w * self.step_s / 3600
        voltage = 230 + self._rng.uniform(-2, 2)
        return {
            "ts": moment.isoformat().replace("+00:00", "Z"),
            "P": round(-load_w, 1),
            "Q": round(-0.3 * load_w, 1),
            "U": round(voltage, 1),
            "I": round(load_w / voltage, 2),
            "f": round(50 + self._rng.uniform(-0.03, 0.03), 3),
            "pf": 0.96,
            "E_imp": round(meter.import_wh),
            "E_exp": round(meter.export_wh),
        }
