# -*- test-case-name: tests.admin.test_cli -*-
"""The ``postroom`` command (DESIGN.md §4).

Exit codes: 0 done, 1 refused with one sentence on stderr saying why (nothing was changed), 2 usage.
Every listing and ``show`` takes ``--json``; a listing then prints an array of objects with an ``id``.
"""

import os
import sys
from pathlib import Path

import attrs
import click

from admin import messages_cli, routes_cli, send_cli, tokens_cli
from admin.context import (
    ACTOR,
    Context,
    PostroomGroup,
    UserError,
    json_option,
    now,
    pass_ctx,
    read_certificate,
    read_ssh_key,
)
from admin.initialise import initialise
from admin.output import emit_json, emit_record, emit_table
from certs import x509 as certs_x509
from certs.devca import DevCA
from gateway.config import ListenSection
from gateway.home import Home
from partners import store
from partners.identifiers import DELIVERY_MODES
from partners.networks import parse_network
from protocols.as2.outbound import SendOptions
from spool import audit
from spool.database import create_engine, upgrade


@click.group(cls=PostroomGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", "home", envvar="POSTROOM_HOME", default="./var", show_default=True,
              type=click.Path(file_okay=False), help="Postroom home directory (env POSTROOM_HOME).")
@click.pass_context
def cli(ctx: click.Context, home: str) -> None:
    """Postroom: a secure B2B e-invoice exchange gateway."""
    ctx.obj = Context(Home(home))


# -- home and daemon --------------------------------------------------------------------------------


@cli.command()
@click.option("--demo", is_flag=True, help="Add two demo partners with keys under HOME/demo/.")
@click.option("--force", is_flag=True, help="Delete an existing home's config, keys, database and spool first.")
@click.option("--hostname", default="localhost", show_default=True, help="The gateway's host name.")
@click.option("--as2-id", default="POSTROOM", show_default=True, help="The gateway's own AS2 ID.")
@click.option("--name", default="Postroom", show_default=True, help="The gateway's display name.")
@click.option("--ephemeral-ports", is_flag=True, help="Listen on tcp:0 (free ports, see run/ports.json).")
@click.option("--database-url", help="e.g. postgresql+psycopg://user@host/db (default: SQLite in the home).")
@pass_ctx
def init(c: Context, demo: bool, force: bool, hostname: str, as2_id: str, name: str, ephemeral_ports: bool,
         database_url: str | None) -> None:
    """Create the home: postroom.toml, the gateway's keys (pki/), spool/ and the database."""
    listen = ListenSection()
    if ephemeral_ports:
        listen = ListenSection(**{k: "tcp:0:interface=127.0.0.1" for k in ("as2", "portal", "sftp", "smtp", "metrics")})
    lines = initialise(c.home, demo=demo, force=force, hostname=hostname, as2_id=as2_id, name=name, listen=listen,
                       database_url=database_url, actor=ACTOR)
    for line in lines:
        click.echo(line)


@cli.command()
@pass_ctx
def serve(c: Context) -> None:
    """Run the gateway in the foreground until SIGTERM or SIGINT."""
    from gateway.reactor import install_reactor

    install_reactor()  # before gateway.app: some of its imports would install the default reactor
    from gateway.app import run

    sys.exit(run(c.config))


@cli.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@pass_ctx
def db_upgrade(c: Context) -> None:
    """Migrate the database to the schema this Postroom needs."""
    engine = create_engine(c.config.database_url)
    upgrade(engine)
    click.echo("database is up to date")


# -- partners ---------------------------------------------------------------------------------------


@cli.group()
def partner() -> None:
    """Trading partners: identifiers, allowlists, certificates, SSH keys."""


@partner.command("add")
@click.argument("partner_id", metavar="ID")
@click.option("--name", required=True, help="Display name.")
@click.option("--as2-id", multiple=True, help="The partner's AS2 ID (repeatable).")
@click.option("--participant-id", multiple=True, metavar="SCHEME:VALUE", help="Routing ID, e.g. 0088:5798000000001.")
@click.option("--email", multiple=True, help="Address the partner sends mail from (repeatable).")
@click.option("--allow-ip", multiple=True, metavar="CIDR", help="Source network allowed to connect (repeatable).")
@click.option("--tls-cert", multiple=True, metavar="PEM", help="TLS client certificate or issuing CA.")
@click.option("--sign-cert", multiple=True, metavar="PEM", help="Signing certificate (S/MIME, XML-DSig).")
@click.option("--encrypt-cert", multiple=True, metavar="PEM", help="Certificate to encrypt to the partner.")
@click.option("--ssh-key", multiple=True, metavar="PUB", help="SSH public key file or line for SFTP.")
@click.option("--deliver", type=click.Choice(DELIVERY_MODES), default="mailbox", show_default=True)
@click.option("--as2-url", help="https:// URL to push AS2 messages to (with --deliver as2).")
@click.option("--sftp-url", metavar="URL", help="sftp://user@host[:port]/dir to upload to (with --deliver sftp).")
@click.option("--sftp-host-key", metavar="KEY|@FILE", help="That server's OpenSSH host key line (or @file.pub).")
@pass_ctx
def partner_add(c: Context, partner_id, name, as2_id, participant_id, email, allow_ip, tls_cert, sign_cert,
                encrypt_cert, ssh_key, deliver, as2_url, sftp_url, sftp_host_key) -> None:
    """Register a partner; everything is checked before anything is written."""
    certificates = tuple(
        (usage, read_certificate(path))
        for usage, paths in (("tls", tls_cert), ("sign", sign_cert), ("encrypt", encrypt_cert))
        for path in paths
    )
    new = store.NewPartner(
        id=partner_id, name=name, as2_ids=as2_id, participant_ids=participant_id, emails=email,
        networks=tuple(parse_network(n) for n in allow_ip), certificates=certificates,
        ssh_keys=tuple(read_ssh_key(k) for k in ssh_key), deliver=deliver, as2_url=as2_url,
        sftp_url=sftp_url, sftp_host_key=_host_key_text(sftp_host_key),
    )
    details = {"name": name, "as2_ids": list(as2_id), "participant_ids": list(participant_id), "emails": list(email),
               "allow_ips": [str(n) for n in new.networks], "deliver": deliver,
               "certificates": [f"{u}:{certs_x509.fingerprint(crt)}" for u, crt in certificates],
               "ssh_keys": [k.fingerprint for k in new.ssh_keys], "sftp_url": sftp_url}
    with c.change("partner.added", partner_id, **details) as (conn, _):
        store.add_partner(conn, new, now())
    click.echo(f"partner {partner_id} added")
    if not allow_ip:
        click.echo(f"note: {partner_id} has no allowed networks yet; add one with `postroom partner allow-ip`",
                   err=True)


@partner.command("list")
@json_option
@pass_ctx
def partner_list(c: Context, as_json: bool) -> None:
    """All partners."""
    with c.transaction() as conn:
        rows = store.list_partners(conn)
    if as_json:
        emit_json(rows)
    else:
        emit_table(rows, ["id", "name", "status", "deliver", "as2_ids", "allow_ips", "certificates", "ssh_keys"])


@partner.command("show")
@click.argument("partner_id", metavar="ID")
@json_option
@pass_ctx
def partner_show(c: Context, partner_id: str, as_json: bool) -> None:
    """One partner in full."""
    with c.transaction() as conn:
        record = store.show_partner(conn, partner_id)
    emit_json(record) if as_json else emit_record(record)


def _status_command(status: str, verb: str):
    @click.argument("partner_id", metavar="ID")
    @pass_ctx
    def command(c: Context, partner_id: str) -> None:
        with c.change(f"partner.{verb}", partner_id) as (conn, _):
            store.set_status(conn, partner_id, status, now())
        click.echo(f"partner {partner_id} {verb}")

    command.__doc__ = f"Mark a partner {status}; running daemons follow within seconds."
    return command


partner.command("disable")(_status_command("disabled", "disabled"))
partner.command("enable")(_status_command("active", "enabled"))


@partner.command("set")
@click.argument("partner_id", metavar="ID")
@click.option("--name", help="New display name.")
@click.option("--deliver", type=click.Choice(DELIVERY_MODES), help="How documents reach the partner.")
@click.option("--as2-url", help="https:// URL to push AS2 messages to (empty string: none).")
@click.option("--sftp-url", metavar="URL", help="sftp://user@host[:port]/dir to upload to (empty string: none).")
@click.option("--sftp-host-key", metavar="KEY|@FILE",
              help="The SFTP server's OpenSSH host key line, or @file.pub (empty string: none).")
@pass_ctx
def partner_set(c: Context, partner_id: str, name: str | None, deliver: str | None, as2_url: str | None,
                sftp_url: str | None, sftp_host_key: str | None) -> None:
    """Change a partner's name, delivery mode, AS2 URL, SFTP URL or pinned SFTP host key."""
    if name is None and deliver is None and as2_url is None and sftp_url is None and sftp_host_key is None:
        raise click.UsageError("give at least one of --name, --deliver, --as2-url, --sftp-url, --sftp-host-key")
    with c.change("partner.changed", partner_id) as (conn, facts):
        facts.update(store.set_delivery(conn, partner_id, now(), deliver=deliver, as2_url=as2_url, name=name,
                                        sftp_url=sftp_url, sftp_host_key=_host_key_text(sftp_host_key)))
    click.echo(f"partner {partner_id} changed")


def _host_key_text(value: str | None) -> str | None:
    """``--sftp-host-key``: the key line itself, or ``@FILE`` (a path that exists is read as well)."""
    if not value:
        return value
    path = value[1:] if value.startswith("@") else value
    if value.startswith("@") or os.path.isfile(path):
        return certs_x509.read_file(path).decode("utf-8", "replace")
    return value


@partner.command("remove")
@click.argument("partner_id", metavar="ID")
@pass_ctx
def partner_remove(c: Context, partner_id: str) -> None:
    """Delete a partner and everything registered to it."""
    with c.change("partner.removed", partner_id) as (conn, _):
        store.remove_partner(conn, partner_id, now())
    click.echo(f"partner {partner_id} removed")


@partner.command("allow-ip")
@click.argument("partner_id", metavar="ID")
@click.argument("cidr")
@pass_ctx
def partner_allow_ip(c: Context, partner_id: str, cidr: str) -> None:
    """Allow connections from a network (CIDR or single address)."""
    network = parse_network(cidr)
    with c.change("partner.allowlist.added", partner_id, network=str(network)) as (conn, _):
        added = store.allow_ip(conn, partner_id, network, now())
    click.echo(f"{network} {'allowed' if added else 'was already allowed'} for {partner_id}")


@partner.command("deny-ip")
@click.argument("partner_id", metavar="ID")
@click.argument("cidr")
@pass_ctx
def partner_deny_ip(c: Context, partner_id: str, cidr: str) -> None:
    """Remove a network from the partner's allowlist."""
    network = parse_network(cidr)
    with c.change("partner.allowlist.removed", partner_id, network=str(network)) as (conn, _):
        store.deny_ip(conn, partner_id, network, now())
    click.echo(f"{network} no longer allowed for {partner_id}")


@partner.command("policy")
@click.argument("partner_id", metavar="ID")
@click.argument("settings", nargs=-1, metavar="[NAME=true|false]...")
@json_option
@pass_ctx
def partner_policy(c: Context, partner_id: str, settings: tuple[str, ...], as_json: bool) -> None:
    """Show a partner's policy, or change it with NAME=true|false."""
    with c.transaction() as conn:
        policy = store.get_policy(conn, partner_id)
    for setting in settings:
        policy = policy.with_setting(setting)
    if settings:
        with c.change("partner.policy.changed", partner_id, policy=policy.to_json()) as (conn, _):
            store.set_policy(conn, partner_id, policy, now())
    emit_json(policy.to_json()) if as_json else emit_record(policy.to_json())


@partner.command("as2")
@click.argument("partner_id", metavar="ID")
@click.argument("settings", nargs=-1, metavar="[NAME=VALUE]...")
@json_option
@pass_ctx
def partner_as2(c: Context, partner_id: str, settings: tuple[str, ...], as_json: bool) -> None:
    """Show or change how AS2 messages to a partner are wrapped: sign, encrypt, compress, pss, signed_mdn
    (true|false), digest (sha1..sha512), cipher, key_transport, mdn (sync|async|none)."""
    with c.transaction() as conn:
        options = SendOptions.from_stored(store.get_as2_options(conn, partner_id))
    for setting in settings:
        options = options.with_setting(setting)
    if settings:
        with c.change("partner.as2.changed", partner_id, as2_options=options.changes()) as (conn, _):
            store.set_as2_options(conn, partner_id, options.changes(), now())
    shown = attrs.asdict(options)
    emit_json(shown) if as_json else emit_record(shown)


@partner.group("cert")
def partner_cert() -> None:
    """A partner's certificates."""


@partner_cert.command("add")
@click.argument("partner_id", metavar="ID")
@click.argument("pem", metavar="PEM")
@click.option("--usage", type=click.Choice(store.CERT_USAGES), required=True)
@pass_ctx
def partner_cert_add(c: Context, partner_id: str, pem: str, usage: str) -> None:
    """Register a certificate (a CA certificate vouches for every certificate it issues)."""
    cert = read_certificate(pem)
    with c.change("partner.certificate.added", partner_id, usage=usage) as (conn, facts):
        fp = facts["fingerprint"] = store.add_certificate(conn, partner_id, usage, cert, now())
    kind = "CA certificate" if certs_x509.is_ca(cert) else "certificate"
    click.echo(f"{usage} {kind} {fp} added to {partner_id}")


@partner_cert.command("list")
@click.argument("partner_id", metavar="ID")
@json_option
@pass_ctx
def partner_cert_list(c: Context, partner_id: str, as_json: bool) -> None:
    """A partner's certificates with fingerprints and validity."""
    with c.transaction() as conn:
        rows = store.list_certificates(conn, partner_id)
    if as_json:
        emit_json(rows)
    else:
        emit_table(rows, ["usage", "fingerprint", "ca", "subject", "not_after"])


@partner_cert.command("remove")
@click.argument("partner_id", metavar="ID")
@click.argument("fingerprint")
@pass_ctx
def partner_cert_remove(c: Context, partner_id: str, fingerprint: str) -> None:
    """Unregister a certificate by its SHA-256 fingerprint."""
    with c.change("partner.certificate.removed", partner_id, fingerprint=fingerprint) as (conn, _):
        store.remove_certificate(conn, partner_id, fingerprint, now())
    click.echo(f"certificate removed from {partner_id}")


@partner.group("ssh-key")
def partner_ssh_key() -> None:
    """A partner's SSH public keys (SFTP)."""


@partner_ssh_key.command("add")
@click.argument("partner_id", metavar="ID")
@click.argument("pub", metavar="PUB")
@click.option("--ca", is_flag=True, help="The key is the partner's SSH certificate authority: OpenSSH user "
              "certificates it signs with the principal ID log in as the partner (the key itself does not).")
@pass_ctx
def partner_ssh_key_add(c: Context, partner_id: str, pub: str, ca: bool) -> None:
    """Register an SSH public key (.pub file or key line)."""
    key = read_ssh_key(pub)
    with c.change("partner.ssh_key.added", partner_id, fingerprint=key.fingerprint, ca=ca) as (conn, _):
        fp = store.add_ssh_key(conn, partner_id, key, now(), ca=ca)
    click.echo(f"SSH {'certificate authority' if ca else 'key'} {fp} added to {partner_id}")


@partner_ssh_key.command("remove")
@click.argument("partner_id", metavar="ID")
@click.argument("fingerprint")
@pass_ctx
def partner_ssh_key_remove(c: Context, partner_id: str, fingerprint: str) -> None:
    """Unregister an SSH key by its SHA256: fingerprint."""
    with c.change("partner.ssh_key.removed", partner_id, fingerprint=fingerprint) as (conn, _):
        store.remove_ssh_key(conn, partner_id, fingerprint, now())
    click.echo(f"SSH key removed from {partner_id}")


# -- audit ------------------------------------------------------------------------------------------


@cli.group("audit")
def audit_group() -> None:
    """The append-only, hash-chained audit trail."""


@audit_group.command("verify")
@json_option
@pass_ctx
def audit_verify(c: Context, as_json: bool) -> None:
    """Check every link of the chain; exit 1 naming the first broken row."""
    with c.reading() as conn:
        verdict = audit.verify(conn)
    if as_json:
        emit_json(attrs.asdict(verdict))
    elif verdict.ok:
        click.echo(f"audit trail intact: {verdict.checked} events, head {verdict.head_seq} {verdict.head_hash}")
    if not verdict.ok:
        raise UserError(f"audit trail broken at event {verdict.broken_seq}: {verdict.reason}")


@audit_group.command("list")
@click.option("--after", default=0, show_default=True, help="Only events after this sequence number.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 100000))
@click.option("--message", "message_id", help="Only events about this message.")
@json_option
@pass_ctx
def audit_list(c: Context, after: int, limit: int, message_id: str | None, as_json: bool) -> None:
    """Audit events in order."""
    with c.reading() as conn:
        rows = [e.to_json() for e in audit.events(conn, after=after, limit=limit, message_id=message_id)]
    if as_json:
        emit_json(rows)
    else:
        emit_table(rows, ["seq", "at", "actor", "event", "details"])


# -- PKI --------------------------------------------------------------------------------------------


@cli.group()
def pki() -> None:
    """The gateway's certificates and the development CA."""


@pki.command("export")
@click.option("--usage", type=click.Choice(["tls", "sign", "encrypt"]), required=True)
@pass_ctx
def pki_export(c: Context, usage: str) -> None:
    """Print the gateway's public certificate for USAGE (PEM) to give to partners."""
    config = c.config
    path = {
        "tls": config.tls.certificate,
        "sign": config.identity.sign_certificate,
        "encrypt": config.identity.encrypt_certificate,
    }[usage]
    full = c.home.resolve(path)
    certs = certs_x509.load_certificates(certs_x509.read_file(full), str(full))
    click.echo(b"".join(certs_x509.to_pem(cert) for cert in certs).decode("ascii"), nl=False)


@pki.command("issue")
@click.argument("name")
@click.option("--usage", type=click.Choice(["tls-client", "tls-server", "sign", "encrypt"]), required=True)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for NAME.key and NAME.crt.")
@click.option("--hostname", multiple=True, help="DNS name or IP for a tls-server certificate.")
@click.option("--email", multiple=True, help="Email address for a sign/encrypt certificate.")
@click.option("--days", default=825, show_default=True, type=click.IntRange(1, 3650))
@pass_ctx
def pki_issue(c: Context, name: str, usage: str, out_dir: str, hostname, email, days: int) -> None:
    """Issue a key and certificate from the home's dev CA (demo and tests only)."""
    ca = DevCA.load(c.home.dev_ca)
    issued = ca.issue(name, usage, Path(out_dir), hostnames=hostname, emails=email, days=days)
    click.echo(f"key:         {issued.key_path}")
    click.echo(f"certificate: {issued.cert_path}")
    click.echo(f"fingerprint: {certs_x509.fingerprint(issued.certificate)}")


for group in (messages_cli.message, messages_cli.spool, routes_cli.route, tokens_cli.token, send_cli.send):
    cli.add_command(group)


def main() -> None:
    """Console entry point."""
    os.umask(0o077)  # databases, spool files and logs are the owner's alone
    cli(prog_name="postroom")
