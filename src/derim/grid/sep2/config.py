"""Settings of the IEEE 2030.5 client and the device identities the spec derives from its cert.

The client's identity is its TLS certificate: the LFDI is the first 160 bits of the SHA-256 hash
of the certificate's DER encoding, the SFDI the first 36 bits of that as a decimal number with a
check digit appended so that all its digits add up to a multiple of ten (IEEE 2030.5 §6.3.4).
"""

from __future__ import annotations

import hashlib
import ssl
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, field_validator, model_validator

from derim.errors import ConfigError

LFDI_PATTERN = r"^[0-9A-Fa-f]{40}$"


def lfdi_of_certificate(certificate: bytes) -> str:
    """The LFDI (40 upper-case hex digits) of a DER-encoded certificate."""
    return hashlib.sha256(certificate).hexdigest()[:40].upper()


def lfdi_of_pem(path: Path) -> str:
    """The LFDI of the first certificate in a PEM file; ``ConfigError`` when unreadable."""
    try:
        der = ssl.PEM_cert_to_DER_cert(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"sep2.client_cert: cannot read a PEM certificate at {path}") from exc
    return lfdi_of_certificate(der)


def sfdi_of(lfdi: str) -> int:
    """The SFDI of an LFDI: its leading 36 bits in decimal, then a sum-to-ten check digit."""
    value = int(lfdi[:9], 16)
    digits_sum = sum(int(digit) for digit in str(value))
    return value * 10 + (10 - digits_sum % 10) % 10


class EndDeviceMapping(BaseModel):
    """Which DERIM devices stand behind one EndDevice of the utility server."""

    model_config = ConfigDict(extra="forbid")

    lfdi: str | None = Field(
        None,
        pattern=LFDI_PATTERN,
        description="The EndDevice's lFDI; none means the client's own (direct, non-aggregator).",
    )
    device_ids: list[str] = Field(default_factory=list, max_length=256)
    group: str | None = Field(None, description="A DERIM group whose members are controlled too.")
    reading_device_ids: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="Devices whose latest readings are mirrored (MirrorUsagePoint) for this site.",
    )

    @model_validator(mode="after")
    def _targets(self) -> EndDeviceMapping:
        if not self.device_ids and self.group is None:
            raise ValueError("give device_ids or a group")
        return self


class Sep2Config(BaseModel):
    """Where the utility's 2030.5 server is, how to reach it, and what its EndDevices map to."""

    model_config = ConfigDict(extra="forbid")

    server_url: HttpUrl = Field(description="Base URL of the server, https only.")
    dcap_path: str = Field("/dcap", pattern=r"^/", description="Path of DeviceCapability.")
    client_cert: Path = Field(description="PEM certificate the client presents (its identity).")
    client_key: Path = Field(description="PEM private key of the client certificate.")
    ca_cert: Path = Field(description="PEM CA bundle the server certificate must chain to.")
    poll_interval_s: float = Field(
        60.0, gt=0, le=3600, description="Seconds between reads of the DER programs."
    )
    post_interval_s: float = Field(
        300.0, gt=0, le=86400, description="Seconds between posts of DER status and readings."
    )
    timeout_s: float = Field(10.0, gt=0, le=120, description="Seconds one HTTP request may take.")
    max_body_bytes: int = Field(
        1_048_576, gt=0, description="Largest response body accepted, bytes."
    )
    end_devices: list[EndDeviceMapping] = Field(min_length=1, max_length=1024)

    @field_validator("server_url")
    @classmethod
    def _https(cls, url: HttpUrl) -> HttpUrl:
        if url.scheme != "https":
            raise ValueError("IEEE 2030.5 requires TLS: use an https:// URL")
        return url

    @property
    def base_url(self) -> str:
        """The server URL without a trailing slash."""
        return str(self.server_url).rstrip("/")

    def lfdi(self) -> str:
        """The client's LFDI, from its certificate."""
        return lfdi_of_pem(self.client_cert)

    def mapping_for(self, lfdi: str | None, own_lfdi: str) -> EndDeviceMapping | None:
        """The mapping of the EndDevice with ``lfdi``, or None when it is not ours."""
        if lfdi is None:
            return None
        for mapping in self.end_devices:
            if (mapping.lfdi or own_lfdi).upper() == lfdi.upper():
                return mapping
        return None
