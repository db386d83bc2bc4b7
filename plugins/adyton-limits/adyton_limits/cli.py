"""``adyton accounts ...``"""

from __future__ import annotations

import json
import sys

import click


def _service(state):
    from adyton.errors import PluginError, SettingsError

    from . import service_for

    try:
        kernel = state.kernel()
    except (PluginError, SettingsError) as exc:
        click.echo(f"adyton: {exc}", err=True)
        sys.exit(2)
    svc = service_for(kernel)
    svc.open_store()
    return svc


def _find(svc, ref: str):
    account = svc.store.find(ref)
    if account is None:
        raise click.ClickException(f"no account {ref!r} (give its id, its account number, or its last 4 digits)")
    return account


def _tier(svc, tier: int) -> int:
    if tier not in svc.settings.tiers:
        raise click.BadParameter(f"no tier {tier} (tiers: {sorted(svc.settings.tiers)})", param_hint="--tier")
    return tier


@click.group()
def accounts() -> None:
    """Accounts, API keys and usage (adyton-limits)."""


@accounts.command()
@click.option("--tier", type=int, default=None, help="Tier (default: limits.default_tier).")
@click.option("--name", default="", help="A label for the account.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def create(state, tier: int | None, name: str, as_json: bool) -> None:
    """Create an account; prints its account number and API key (shown once)."""
    svc = _service(state)
    new = svc.store.create_account(_tier(svc, tier if tier is not None else svc.settings.default_tier), name)
    if as_json:
        click.echo(json.dumps(new.as_dict(), indent=2))
        return
    click.echo(f"account:        {new.account.id}  (tier {new.account.tier}{', ' + name if name else ''})")
    click.echo(f"account number: {new.account_number}")
    click.echo(f"api key:        {new.api_key}")
    click.echo("Keep both safe: they are stored only as hashes and cannot be shown again.")


@accounts.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def list_(state, as_json: bool) -> None:
    """List accounts."""
    svc = _service(state)
    rows = [a.as_dict() for a in svc.store.list_accounts()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no accounts (create one: adyton accounts create)")
    for r in rows:
        state_ = "enabled" if r["enabled"] else "DISABLED"
        click.echo(f"{r['id']}  tier {r['tier']}  {state_}  …{r['account_number_last4']}  "
                   f"created {r['created_at']}  {r['name']}")


@accounts.command()
@click.argument("account")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def show(state, account: str, as_json: bool) -> None:
    """Show one account and its usage."""
    svc = _service(state)
    a = _find(svc, account)
    data = {**a.as_dict(), "limits": svc.settings.tiers[a.tier].model_dump() if a.tier in svc.settings.tiers else None,
            "usage": svc.store.usage(a.id)}
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for k, v in data.items():
        click.echo(f"{k}: {v}")


@accounts.command(name="rotate-key")
@click.argument("account")
@click.pass_obj
def rotate_key(state, account: str) -> None:
    """Issue a new API key; the old one stops working at once."""
    svc = _service(state)
    a = _find(svc, account)
    key = svc.store.rotate_key(a.id)
    click.echo(f"new api key for {a.id}: {key}")
    click.echo("The previous key no longer works.")


@accounts.command(name="set-tier")
@click.argument("account")
@click.argument("tier", type=int)
@click.pass_obj
def set_tier(state, account: str, tier: int) -> None:
    """Set an account's tier."""
    svc = _service(state)
    a = _find(svc, account)
    updated = svc.store.set_tier(a.id, _tier(svc, tier))
    click.echo(f"{updated.id}: tier {a.tier} -> {updated.tier}")


@accounts.command()
@click.argument("account")
@click.option("--enable", is_flag=True, help="Enable it again instead.")
@click.pass_obj
def disable(state, account: str, enable: bool) -> None:
    """Disable an account (its requests get 401 at once)."""
    svc = _service(state)
    a = _find(svc, account)
    updated = svc.store.set_enabled(a.id, enable)
    click.echo(f"{updated.id}: {'enabled' if updated.enabled else 'disabled'}")


@accounts.command()
@click.argument("account", required=False)
@click.option("--since", default=None, help="ISO date/time (UTC) or a duration: 24h, 7d.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def usage(state, account: str | None, since: str | None, as_json: bool) -> None:
    """Usage from the ledger, per account and outcome."""
    from .http import parse_since

    svc = _service(state)
    account_id = _find(svc, account).id if account else None
    try:
        since_ts = parse_since(since, svc.clock())
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    rows = svc.store.usage(account_id, since_ts)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no usage")
    for r in rows:
        click.echo(f"{r['account_id']}  {r['outcome']:<9}  requests {r['requests']:>7}  "
                   f"prompt {r['prompt_tokens']:>10}  completion {r['completion_tokens']:>10}")


@accounts.command(name="admin-key")
@click.pass_obj
def admin_key(state) -> None:
    """Where the admin API key is (created if missing)."""
    svc = _service(state)
    click.echo(str(svc.ensure_admin_key()))
