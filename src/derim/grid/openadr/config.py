"""Settings of the OpenADR 2.0b VEN: the VTN to register with, TLS and signing, and the
programmes that say which DERIM group answers which events and how each signal becomes a
power limit."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from derim.models.common import DeviceType
from derim.models.device import Label

SignalKind = Literal["level", "percent", "fraction", "group_kw"]
"""How a signal's payload reads: ``level`` a SIMPLE level looked up in ``levels``; ``percent``
a limit in % of each device's rating; ``fraction`` the same as 0-1 (LOAD_CONTROL
``x-loadControlCapacity``); ``group_kw`` a limit for the whole group in kW, shared between the
members in proportion to their ratings (LOAD_DISPATCH ``setpoint``)."""

DEFAULT_LEVELS: dict[int, float | None] = {0: None, 1: 70.0, 2: 40.0, 3: 0.0}
"""SIMPLE levels (normal, moderate, high, special) as limits in % of rating; None: no limit."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SignalRule(_Strict):
    """Which event signal this rule reads, and how its payload becomes a power limit."""

    signal_name: str = Field(
        "SIMPLE", min_length=1, max_length=64, description="OpenADR signalName (or x-...)."
    )
    signal_type: str | None = Field(
        None,
        max_length=64,
        description="OpenADR signalType to match (level, setpoint, ...); None matches any.",
    )
    kind: SignalKind = "level"
    levels: dict[int, float | None] = Field(
        default_factory=lambda: dict(DEFAULT_LEVELS),
        description="For kind ``level``: each level's limit in % of rating (None: no limit).",
    )

    @model_validator(mode="after")
    def _percentages(self) -> SignalRule:
        if any(p is not None and not 0 <= p <= 100 for p in self.levels.values()):
            raise ValueError("levels are limits in % of rating, 0 to 100 (or null)")
        return self

    def matches(self, signal_name: str, signal_type: str | None) -> bool:
        """Whether a signal of this name and type is the one this rule reads."""
        if signal_name != self.signal_name:
            return False
        return self.signal_type is None or signal_type == self.signal_type


class Programme(_Strict):
    """A demand-response programme: the events it takes and the group that carries them."""

    group: Label = Field(description="The DERIM device group that carries the events.")
    market_context: str | None = Field(
        None, max_length=256, description="The programme's market context URI; None: any."
    )
    resource_id: str | None = Field(
        None,
        max_length=64,
        description="The resource id the VTN targets and the reports "
        "name for this group (default: the group name).",
    )
    device_types: list[DeviceType] = Field(
        default_factory=list, description="Members of these types only; empty: any type."
    )
    signals: list[SignalRule] = Field(
        default_factory=lambda: [SignalRule()], min_length=1, max_length=16
    )

    @property
    def resource(self) -> str:
        """The resource id of the group towards the VTN."""
        return self.resource_id or self.group


class OpenAdrConfig(_Strict):
    """An OpenADR 2.0b VEN (simple HTTP, pull model) and its programmes."""

    vtn_url: str = Field(
        pattern=r"^https?://",
        max_length=512,
        description="The VTN's base URL, such as https://vtn.example/OpenADR2/Simple/2.0b.",
    )
    ven_name: str = Field(min_length=1, max_length=128)
    ven_id: str | None = Field(
        None, max_length=128, description="A venID agreed with the VTN; None: the VTN assigns."
    )
    cert_path: Path | None = Field(
        None,
        description="PEM client certificate: TLS client authentication and message "
        "signing (with ``key_path`` and ``ca_path``).",
    )
    key_path: Path | None = Field(None, description="PEM private key of ``cert_path``.")
    key_passphrase: SecretStr | None = None
    ca_path: Path | None = Field(
        None, description="PEM CA bundle that the VTN's TLS certificate is checked against."
    )
    vtn_fingerprint: str | None = Field(
        None,
        max_length=128,
        description="Fingerprint of the VTN's signing certificate: "
        "unsigned or differently signed messages from the VTN are then ignored.",
    )
    check_hostname: bool = True
    sign_messages: bool = Field(True, description="Sign outgoing messages (needs a key).")
    report_interval_s: float = Field(
        10.0, ge=1, le=3600, description="Shortest reporting interval offered to the VTN, s."
    )
    report_stale_after_s: float = Field(
        300.0, gt=0, description="Readings older than this (s) are left out of reports."
    )
    retry_initial_s: float = Field(
        1.0,
        gt=0,
        le=60,
        description="First wait, s, after the VTN could not be reached; doubled up to "
        "``retry_max_s``, each wait plus up to 10 % at random.",
    )
    retry_max_s: float = Field(60.0, gt=0, le=3600)
    programmes: list[Programme] = Field(min_length=1, max_length=64)

    @model_validator(mode="after")
    def _tls_complete(self) -> OpenAdrConfig:
        if (self.cert_path is None) != (self.key_path is None):
            raise ValueError("give cert_path and key_path together")
        if self.cert_path is not None and self.ca_path is None:
            raise ValueError("a client certificate needs ca_path to check the VTN's")
        if self.ca_path is not None and self.cert_path is None:
            raise ValueError(
                "ca_path is only used with a client certificate (cert_path, key_path); "
                "without one the VTN would be checked against the system CAs instead"
            )
        if self.retry_max_s < self.retry_initial_s:
            raise ValueError("retry_max_s is below retry_initial_s")
        resources = [p.resource for p in self.programmes]
        if len(set(resources)) != len(resources):
            raise ValueError("two programmes have the same resource id")
        return self

    def weaknesses(self) -> list[str]:
        """What in these settings leaves the link open to eavesdropping or a forged VTN, one
        line each (logged at start)."""
        plain = self.vtn_url.startswith("http://")
        found = []
        if plain:
            found.append("plain http: messages to and from the VTN travel unencrypted")
        if self.vtn_fingerprint is None:
            found.append("no vtn_fingerprint: the VTN's messages are taken without a signature")
        if not plain and self.cert_path is not None and not self.check_hostname:
            found.append("check_hostname is false: any host with a certificate from ca_path passes")
        return found
