# -*- test-case-name: tests.gateway.test_app -*-
"""The composition root: the only module that knows every concrete class.

``make_service(config, reactor)`` builds one ``MultiService`` (database → directory → listeners);
``run(home)`` installs the asyncio reactor — asyncssh shares its event loop — and runs it until
SIGTERM or SIGINT, then stops the services in reverse order and exits 0.
"""

import asyncio
import os
import sys
from datetime import UTC, datetime
from typing import Callable

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server

from certs import tls as certs_tls
from certs.errors import CertificateError
from certs.x509 import load_certificates, load_key_and_certificate, read_file
from gateway.committer import GroupCommitter
from gateway.config import Config, ConfigError
from gateway.database_service import DatabaseService
from gateway.delivery import DeliveryService
from gateway.directory_service import DirectoryService
from gateway.intake import Intake
from gateway.listeners import Door, ListenerService
from gateway.mailer import MailCourier, MailIdentity, MailPlanner
from gateway.metrics import Metrics, operations_root
from gateway.openapi import PARTNER_DOCUMENT
from gateway.pools import ThreadPoolService
from gateway.portal import PortalHome
from gateway.portal_api import build_api
from gateway.reactor import install_reactor
from gateway.receipt_courier import ReceiptCourier
from gateway.receipts import ReceiptSigner
from gateway.recovery import RecoveryService
from gateway.sftp_service import SFTPDoor
from gateway.smtp_service import SMTPDoor
from partners.networks import NetworkSet, parse_network
from protocols.as2.client import Poster
from protocols.as2.mime import Region
from protocols.as2.push import AS2Push, AS2Receipts
from protocols.as2.push import Identity as AS2Identity
from protocols.as2.resource import AS2Resource, AS2Settings
from protocols.envelope import IntakeUnavailable
from protocols.listen import AllowlistFactory, with_tls
from protocols.sftp.bans import BanPolicy
from protocols.sftp.push import SFTPPush
from protocols.smtp.push import EmailPush
from protocols.smtp.push import Signer as MailSigner
from protocols.smtp.receipts import MailReceipts
from protocols.smtp.relay import Relay, RelaySettings
from protocols.upload import api_root, bounded_request
from spool import records
from spool.blobs import BlobStore
from spool.database import check_current, create_engine, reading

_log = Logger()


def mail_sender(config: Config) -> str:
    """The address outbound mail comes from."""
    return config.smtp_relay.sender or f"invoices@{config.gateway.hostname}"


def relay_settings(config: Config) -> RelaySettings:
    """``[smtp_relay]`` as relay settings; the password is read from its file now (never kept in the config).

    :raises ConfigError: the password file or the CA file cannot be read.
    """
    section, home = config.smtp_relay, config.home
    try:
        password = home.resolve(section.password_file).read_text().strip() if section.password_file else ""
        trust = (tuple(load_certificates(read_file(home.resolve(section.ca_file)), section.ca_file))
                 if section.ca_file else None)
    except (OSError, CertificateError) as e:
        raise ConfigError(f"[smtp_relay]: {e}") from e
    return RelaySettings(host=section.host, port=section.port, starttls=section.starttls, username=section.username,
                         password=password, helo=config.gateway.hostname, trust=trust)


def _site(root: resource.Resource, max_body: int | None = None, scratch=None) -> server.Site:
    site = server.Site(root, timeout=60)
    if max_body is not None:
        site.requestFactory = bounded_request(max_body, scratch)
    site.displayTracebacks = False
    site.noisy = False
    return site


class PostroomService(MultiService):
    """The daemon's root service; :attr:`metrics`, :attr:`directory` and :attr:`listeners` for tests."""

    def __init__(self, config: Config, reactor, on_fatal: Callable[[Failure], None]):
        super().__init__()
        self.config = config
        self.metrics = Metrics()
        engine = create_engine(config.database_url)
        try:
            check_current(engine)
        except Exception:
            engine.dispose()
            raise
        self.db = DatabaseService(engine, reactor)
        self.db.setServiceParent(self)
        self.directory = DirectoryService(self.db, reactor, config.directory.reload_seconds, self.metrics)
        self.directory.setServiceParent(self)
        home = config.home
        node = config.gateway.node_name
        self.blobs = BlobStore(home.resolve(config.storage.spool_dir), max_bytes=config.limits.max_payload_bytes,
                               node=node)
        self.io = ThreadPoolService(reactor, "io", threads=32)
        self.cpu = ThreadPoolService(reactor, "cpu", threads=max(2, os.cpu_count() or 2))
        self.committer = GroupCommitter(reactor, self.blobs, engine, on_batch=self.metrics.commit_batch.observe)
        for service in (self.io, self.cpu, self.committer):
            service.setServiceParent(self)
        identity = load_key_and_certificate(
            read_file(home.resolve(config.tls.private_key)),
            read_file(home.resolve(config.tls.certificate)),
            str(home.resolve(config.tls.private_key)),
            str(home.resolve(config.tls.certificate)),
        )
        self.signer = ReceiptSigner.from_config(config)
        poster = Poster(reactor, identity)
        as2_identity = AS2Identity(config.gateway.as2_id, config.gateway.hostname, self.signer.key,
                                   self.signer.certificate, self._as2_url)
        push_targets = {"as2": AS2Push(poster, as2_identity, self._read_payload, self.cpu.run, self._now,
                                       self.blobs.scratch, lambda *a: self.delivery.note_push(*a)),
                        # the gateway logs in to partners' SFTP servers with its own SSH host key (D31)
                        "sftp": SFTPPush(str(home.pki / "ssh_host_ed25519_key"), self._read_payload, self.io.run,
                                         getattr(reactor, "_asyncioEventloop", None) or asyncio.get_event_loop())}
        relay = Relay(reactor, relay_settings(config)) if config.smtp_relay.host else None
        if relay is not None:
            signer = MailSigner(mail_sender(config), config.gateway.hostname, self.signer.key, self.signer.certificate)
            push_targets["email"] = EmailPush(relay, signer, self._read_payload, self.cpu.run, self._now,
                                              self.blobs.scratch)
        pushable = frozenset(push_targets)
        self.recovery = RecoveryService(self.db, self.blobs, self.directory.when_ready, self.directory.get, node,
                                        self._now, pushable)
        self.recovery.setServiceParent(self)
        mail_identity = MailIdentity(mail_sender(config), config.gateway.hostname, config.portal.base_url)
        self.mail = None
        if relay is not None:
            self.mail = MailCourier(self.db, reactor, self._now, relay, mail_identity, self.directory.get,
                                    ready=self.recovery.when_done, max_attempts=config.delivery.max_attempts,
                                    backoff=config.delivery.backoff)
        on_filed = MailPlanner(mail_identity, self.directory.get).filed if self.mail is not None else None
        after_filing = self.mail.wake if self.mail is not None else lambda: None
        self.delivery = DeliveryService(
            self.db, reactor, self._now, self.directory.get, push_targets, ready=self.recovery.when_done,
            max_attempts=config.delivery.max_attempts, backoff=config.delivery.backoff, worker=node,
            on_filed=on_filed, after_filing=after_filing)
        self.delivery.setServiceParent(self)
        if self.mail is not None:
            self.mail.setServiceParent(self)
        receipt_senders = {"as2": AS2Receipts(poster, self.directory.get, config.gateway.as2_id,
                                              config.gateway.hostname)}
        if relay is not None:
            receipt_senders["email"] = MailReceipts(relay, mail_sender(config), config.gateway.hostname, self._now)
        self.courier = ReceiptCourier(
            self.db, reactor, self._now, receipt_senders,
            ready=self.recovery.when_done, max_attempts=config.delivery.max_attempts, backoff=config.delivery.backoff)
        self.courier.setServiceParent(self)
        self.intake = Intake(self.blobs, self.io.run, self.cpu.run, self.committer.commit, self.directory.get,
                             self.signer, self._now, on_accepted=self.delivery.wake_soon, pushable=pushable,
                             on_filed=on_filed, after_filing=after_filing)
        self.listeners = ListenerService(
            reactor, self._doors(config, reactor, identity), home.ports_file, self.recovery.when_done, on_fatal
        )
        self.listeners.setServiceParent(self)

    def stopService(self) -> Deferred:
        """Stop the children one at a time, last started first, each after the previous has finished.

        ``MultiService`` stops them all at once: the thread pools would stop under work still in
        flight (listeners and delivery rounds use them until they are done), and hang the shutdown.
        """
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop_in_order())

    async def _stop_in_order(self) -> None:
        for service in reversed(list(self)):
            await maybeDeferred(service.stopService)

    def _now(self) -> datetime:
        return datetime.now(UTC)

    def _accept(self, envelope, payload) -> Deferred:
        """The intake, counted per channel and outcome."""
        return self._counted(envelope, self.intake.accept(envelope, payload))

    def _refuse(self, envelope, findings, payload) -> Deferred:
        """A door's own refusal, quarantined by the intake and counted."""
        return self._counted(envelope, self.intake.refuse(envelope, findings, payload))

    def _counted(self, envelope, d: Deferred) -> Deferred:
        def counted(decision):
            self.metrics.messages.labels(channel=envelope.channel, outcome=decision.outcome).inc()
            if decision.receipt.dispatch is not None:
                self.courier.wake()
            return decision

        def unavailable(failure):
            failure.trap(IntakeUnavailable)
            self.metrics.messages.labels(channel=envelope.channel, outcome="unavailable").inc()
            return failure

        return d.addCallbacks(counted, unavailable)

    @staticmethod
    def _decryption_keys(config: Config) -> tuple:
        """The gateway's decryption key pairs (S/MIME for AS2 and email)."""
        home, ident = config.home, config.identity
        key_path, cert_path = home.resolve(ident.encrypt_private_key), home.resolve(ident.encrypt_certificate)
        decryption = load_key_and_certificate(read_file(key_path), read_file(cert_path), str(key_path), str(cert_path))
        return ((decryption.key, decryption.certificate),)

    def _as2_settings(self, config: Config) -> AS2Settings:
        return AS2Settings(as2_id=config.gateway.as2_id, hostname=config.gateway.hostname,
                           recipients=self._decryption_keys(config),
                           max_decompressed=config.limits.max_decompressed_bytes, accept=self._accept,
                           refuse=self._refuse, run_cpu=self.cpu.run, scratch=self.blobs.scratch,
                           receipt_arrived=self.delivery.receipt_arrived)

    def _read_payload(self, message) -> Deferred:
        return self.io.run(thd_read_blob, self.blobs, message.sha256)

    def _as2_url(self) -> str | None:
        """Where partners send async MDNs for our pushes."""
        if self.config.gateway.as2_url:
            return self.config.gateway.as2_url
        port = self.listeners.ports.get("as2")
        return f"https://{self.config.gateway.hostname}:{port.getHost().port}/as2" if port is not None else None

    def _receipt(self, receipt_id: str):
        return self.db.run(thd_get_receipt, receipt_id)

    def _authorize_tls(self, cert) -> bool:
        return self.directory.get().by_certificate("tls", cert, self._now()) is not None

    def _guard(self, factory, door: str, extra: NetworkSet | None = None) -> AllowlistFactory:
        extra = extra or NetworkSet()

        def allowed(host: str) -> bool:
            return self.directory.get().allows_anyone(host) or host in extra

        return AllowlistFactory(factory, allowed, door, self.metrics.refused, self.metrics.accepted)

    def _doors(self, config: Config, reactor, identity) -> list[Door]:
        doors = []
        if config.listen.as2:
            root = resource.Resource()
            root.putChild(b"as2", AS2Resource(self.directory.get, self._now, self._as2_settings(config)))
            root.putChild(b"api", api_root(self.directory.get, self._now, self._accept, self._receipt,
                                           PARTNER_DOCUMENT))
            mtls = certs_tls.ServerTLS(certs_tls.server_context(identity, self._authorize_tls, b"postroom-as2"))
            # room for S/MIME's base64 and MIME wrapping around the largest payload we accept
            max_body = 2 * config.limits.max_payload_bytes + (1 << 20)
            site = _site(root, max_body, self.blobs.scratch)
            doors.append(Door("as2", config.listen.as2, self._guard(with_tls(mtls, site), "as2")))
        if config.listen.portal:
            tls = certs_tls.ServerTLS(certs_tls.server_context(identity, None, b"postroom-portal"))
            extra = NetworkSet(parse_network(n) for n in config.portal.allow_ips)
            home_page = PortalHome(config.gateway.name)
            home_page.putChild(b"api", build_api(self.db, self.blobs, self.signer, self._now))
            site = _site(home_page)
            doors.append(Door("portal", config.listen.portal, self._guard(with_tls(tls, site), "portal", extra)))
        if config.listen.sftp:
            pki = config.home.pki
            sftp = SFTPDoor(reactor, [pki / "ssh_host_ed25519_key", pki / "ssh_host_rsa_key"], self.db,
                            self.blobs, self.signer, self.directory.get, self._accept, self.io.run, self._now,
                            self.metrics, config.limits.max_payload_bytes,
                            BanPolicy(config.sftp.ban_after, config.sftp.ban_window, config.sftp.ban_seconds),
                            config.sftp.max_connections, config.sftp.max_rate)
            doors.append(Door("sftp", config.listen.sftp, None, sftp.listen))
        if config.listen.smtp:
            keys = self._decryption_keys(config)
            smtp = SMTPDoor(
                hostname=config.gateway.hostname,
                tls_creator=certs_tls.ServerTLS(certs_tls.server_context(identity, None, b"postroom-smtp")),
                directory=self.directory.get, accept=self._accept, refuse=self._refuse, run_cpu=self.cpu.run,
                scratch=self.blobs.scratch, recipients=lambda: keys, now=self._now,
                max_bytes=2 * config.limits.max_payload_bytes + (1 << 20),  # base64 and MIME around the largest
                max_decompressed=config.limits.max_decompressed_bytes, mail_receipts=bool(config.smtp_relay.host))
            doors.append(Door("smtp", config.listen.smtp, self._guard(smtp.factory(), "smtp")))
        if config.listen.metrics:
            site = _site(operations_root(self.metrics, self.directory.health))
            doors.append(Door("metrics", config.listen.metrics, site))
        return doors


def thd_read_blob(blobs: BlobStore, sha256: str) -> Region:
    """A message's payload as a region of its blob file (pushes stream it; closed when garbage collected)."""
    return Region.of_file(blobs.open(sha256))


def thd_get_receipt(engine, receipt_id: str):
    """A stored receipt by ID, or None."""
    with reading(engine) as conn:
        return records.get_receipt(conn, receipt_id)


def make_service(config: Config, reactor, on_fatal: Callable[[Failure], None]) -> PostroomService:
    """Build the daemon for ``config`` (blocking checks — database schema, keys — happen here)."""
    return PostroomService(config, reactor, on_fatal)


def run(config: Config) -> int:
    """Run the daemon in the foreground until SIGTERM/SIGINT; the process exit code."""
    reactor = install_reactor()
    from twisted.logger import globalLogBeginner, textFileLogObserver

    outcome = {"code": 0}

    def fatal(failure: Failure) -> None:
        _log.critical("cannot start: {error}", error=failure.getErrorMessage())
        outcome["code"] = 1
        if reactor.running:
            reactor.stop()

    service = make_service(config, reactor, fatal)  # bad schema or keys: raised before any log line
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    reactor.callWhenRunning(service.startService)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return outcome["code"]
