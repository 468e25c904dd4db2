"""``derim keys``: create, list and revoke API keys (each change is audited as ``cli``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click

from derim.config import Settings
from derim.errors import DerimError
from derim.security.audit import AuditEntry, AuditLog
from derim.security.keys import KeyStore, Role


@contextmanager
def _stores(ctx: click.Context) -> Iterator[tuple[KeyStore, AuditLog]]:
    settings: Settings = ctx.obj
    keys = KeyStore(settings.data_dir / "keys.db")
    audit = AuditLog(settings.data_dir / "audit.db")
    keys.open_sync()
    audit.open_sync()
    try:
        yield keys, audit
    except DerimError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        keys.close()
        audit.close()


@click.group()
def keys() -> None:
    """Manage API keys (roles: viewer, operator, admin)."""


@keys.command("create")
@click.option("--role", type=click.Choice([r.value for r in Role]), required=True)
@click.option("--name", required=True, help="Who or what the key is for.")
@click.pass_context
def create(ctx: click.Context, role: str, name: str) -> None:
    """Create a key and print its token (shown this once; only its hash is stored)."""
    with _stores(ctx) as (store, audit):
        key, token = store.create(name, Role(role))
        audit.record_sync(
            AuditEntry(
                actor="cli",
                action="key.create",
                target=key.key_id,
                result="ok",
                detail={"name": name, "role": role},
            )
        )
    click.echo(f"created {role} key {key.key_id} for {name}; its token (shown once):")
    click.echo(token)


@keys.command("list")
@click.pass_context
def list_keys(ctx: click.Context) -> None:
    """List keys (never their secrets)."""
    with _stores(ctx) as (store, _):
        for key in store.listing():
            state = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "live"
            click.echo(f"{key.key_id}  {key.role.value:<8}  {state:<18}  {key.name}")


@keys.command("revoke")
@click.argument("key_id")
@click.pass_context
def revoke(ctx: click.Context, key_id: str) -> None:
    """Revoke a key; a running server refuses it from its next request."""
    with _stores(ctx) as (store, audit):
        key = store.revoke(key_id)
        audit.record_sync(
            AuditEntry(
                actor="cli",
                action="key.revoke",
                target=key_id,
                result="ok",
                detail={"name": key.name},
            )
        )
    click.echo(f"revoked {key_id} ({key.name})")
