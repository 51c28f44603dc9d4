"""Tests for :mod:`admin.cli`: the ``postroom`` contract of DESIGN.md §4, run in-process with CliRunner.

Exit 0 when done, 1 with one ``postroom: error:`` line when refused (and then nothing changed), 2 for
usage errors; ``--json`` on every listing and show.
"""

import json
import shutil
import stat
import subprocess

import pytest
from click.testing import CliRunner
from cryptography import x509

from admin.cli import cli
from certs import x509 as certs_x509
from certs.x509 import fingerprint, load_certificate
from tests.admin.conftest import ERROR_PREFIX

POLICY_DEFAULTS = {
    "require_xmldsig": False,
    "allow_opaque": False,
    "as2_require_signature": True,
    "as2_require_encryption": True,
    "allow_sha1": False,
    "allow_unsigned_mail": False,
}


def demo_cert(home, partner: str, usage: str) -> x509.Certificate:
    """A demo partner's certificate as ``init --demo`` wrote it."""
    return load_certificate((home.path / "demo" / partner / f"{partner}-{usage}.crt").read_bytes())


def colon_upper(fp: str) -> str:
    """A fingerprint the way ``openssl x509 -fingerprint`` prints it: AB:CD:…"""
    return ":".join(fp[i:i + 2] for i in range(0, len(fp), 2)).upper()


# -- partner add, list, show ------------------------------------------------------------------------


def test_partner_add_with_every_option_is_shown_in_full(postroom, write_cert, ssh_key):
    """Every option of ``partner add`` is registered, normalised, and reported back by ``show --json``."""
    tls_path, tls = write_cert("initech-tls", "tls-client")
    sign_path, sign = write_cert("initech-sign", "sign", emails=["ap@initech.example"])
    enc_path, enc = write_cert("initech-encrypt", "encrypt", emails=["ap@initech.example"])
    pub_path, pub_from_file = ssh_key("initech-file")
    _, pub_from_line = ssh_key("initech-line")

    result = postroom.ok(
        "partner", "add", "initech", "--name", "Initech Ltd",
        "--as2-id", "INITECH", "--as2-id", "INITECH-TEST",
        "--participant-id", "0088:5790000000001", "--participant-id", "9925:BE0123456789",
        "--email", "ap@initech.example", "--email", "Billing@Initech.Example",
        "--allow-ip", "192.0.2.0/24", "--allow-ip", "2001:db8::/32", "--allow-ip", "198.51.100.7",
        "--tls-cert", tls_path, "--sign-cert", sign_path, "--encrypt-cert", enc_path,
        "--ssh-key", pub_path, "--ssh-key", f"{pub_from_line.openssh} initech-line@test",
        "--deliver", "as2", "--as2-url", "https://as2.initech.example/as2",
    )
    assert result.stdout == "partner initech added\n"
    assert result.stderr == ""  # networks were given, so no allowlist reminder

    shown = postroom.json("partner", "show", "initech")
    assert shown["id"] == "initech"
    assert shown["name"] == "Initech Ltd"
    assert shown["status"] == "active"
    assert shown["deliver"] == "as2"
    assert shown["as2_url"] == "https://as2.initech.example/as2"
    assert shown["as2_ids"] == ["INITECH", "INITECH-TEST"]
    assert shown["participant_ids"] == ["0088:5790000000001", "9925:be0123456789"]
    assert shown["emails"] == ["ap@initech.example", "billing@initech.example"]
    assert shown["allow_ips"] == ["192.0.2.0/24", "2001:db8::/32", "198.51.100.7/32"]
    assert {(c["usage"], c["fingerprint"]) for c in shown["certificates"]} == {
        ("tls", fingerprint(tls)), ("sign", fingerprint(sign)), ("encrypt", fingerprint(enc)),
    }
    for c in shown["certificates"]:
        assert c["id"] == c["fingerprint"]
        assert c["ca"] is False
        assert "CN=initech-" in c["subject"]
    assert sorted((k["fingerprint"], k["type"], k["comment"]) for k in shown["ssh_keys"]) == sorted([
        (pub_from_file.fingerprint, "ssh-ed25519", "initech-file@test"),
        (pub_from_line.fingerprint, "ssh-ed25519", "initech-line@test"),
    ])
    assert shown["policy"] == POLICY_DEFAULTS

    summary = next(p for p in postroom.json("partner", "list") if p["id"] == "initech")
    assert summary["certificates"] == 3
    assert summary["ssh_keys"] == 2


def test_partner_add_without_networks_reminds_about_the_allowlist(postroom):
    """A partner with no allowed network cannot connect yet, so ``add`` says how to fix that (on stderr)."""
    result = postroom.ok("partner", "add", "hooli", "--name", "Hooli")
    assert result.stdout == "partner hooli added\n"
    assert "partner allow-ip" in result.stderr
    assert postroom.json("partner", "show", "hooli")["allow_ips"] == []


def test_partner_list_json_is_an_array_of_objects_with_ids(postroom):
    """``partner list --json`` is the contract's listing shape and holds the demo partners."""
    listing = postroom.json("partner", "list")
    assert isinstance(listing, list)
    assert all(isinstance(p, dict) and "id" in p for p in listing)
    assert [p["id"] for p in listing] == ["acme", "globex"]
    acme = listing[0]
    assert acme["as2_ids"] == ["ACME"]
    assert acme["allow_ips"] == ["127.0.0.0/8"]
    assert acme["certificates"] == 3
    assert acme["ssh_keys"] == 1


@pytest.mark.parametrize(
    "args",
    [("partner", "list"), ("partner", "show", "acme"), ("partner", "cert", "list", "acme"),
     ("partner", "policy", "acme")],
    ids=lambda a: " ".join(a),
)
def test_every_listing_and_show_takes_json(postroom, args):
    """Scripts can ask any listing or show for JSON; listings are arrays of objects each with an id."""
    value = postroom.json(*args)
    if args[1] == "list" or args[2] == "list":
        assert isinstance(value, list) and value
        assert all(isinstance(item, dict) and item["id"] for item in value)
    else:
        assert isinstance(value, dict)


def test_partner_list_for_people_has_a_header_and_a_row_per_partner(postroom):
    """The human listing starts with a header line naming the columns, then one row per partner."""
    lines = postroom.ok("partner", "list").stdout.splitlines()
    assert lines[0].split()[:4] == ["ID", "NAME", "STATUS", "DELIVER"]
    assert [line.split()[0] for line in lines[1:]] == ["acme", "globex"]
    assert "127.0.0.0/8" in lines[1]


def test_partner_show_for_people_lists_key_value_lines(postroom):
    """The human ``show`` names each field, with the certificates indented below."""
    out = postroom.ok("partner", "show", "acme").stdout
    assert "id: acme\n" in out
    assert "name: ACME Corporation\n" in out
    assert "certificates:\n  - " in out
    assert fingerprint(demo_cert(postroom.home, "acme", "tls")) in out


def test_disable_and_enable_change_the_status(postroom):
    """``disable`` marks a partner disabled and ``enable`` makes it active again, leaving the other alone."""
    assert postroom.ok("partner", "disable", "acme").stdout == "partner acme disabled\n"
    assert postroom.json("partner", "show", "acme")["status"] == "disabled"
    assert {p["id"]: p["status"] for p in postroom.json("partner", "list")} == {
        "acme": "disabled", "globex": "active",
    }
    assert postroom.ok("partner", "enable", "acme").stdout == "partner acme enabled\n"
    assert postroom.json("partner", "show", "acme")["status"] == "active"


def test_remove_deletes_the_partner_and_frees_its_credentials(postroom):
    """After ``remove`` the partner is gone, and its certificate and AS2 ID may be given to someone else."""
    assert postroom.ok("partner", "remove", "globex").stdout == "partner globex removed\n"
    assert [p["id"] for p in postroom.json("partner", "list")] == ["acme"]
    assert "no partner with ID 'globex'" in postroom.refused("partner", "show", "globex")
    postroom.ok("partner", "add", "globex2", "--name", "Globex again", "--as2-id", "GLOBEX",
                "--tls-cert", postroom.home.path / "demo/globex/globex-tls.crt", "--allow-ip", "127.0.0.1")
    assert postroom.json("partner", "show", "globex2")["as2_ids"] == ["GLOBEX"]


# -- allowlists ---------------------------------------------------------------------------------------


def test_allow_ip_and_deny_ip_edit_the_allowlist(postroom):
    """``allow-ip`` adds a network once, ``deny-ip`` takes it away, and denying it again is refused."""
    assert postroom.ok("partner", "allow-ip", "acme", "198.51.100.0/24").stdout == (
        "198.51.100.0/24 allowed for acme\n"
    )
    assert postroom.json("partner", "show", "acme")["allow_ips"] == ["127.0.0.0/8", "198.51.100.0/24"]
    assert "already allowed" in postroom.ok("partner", "allow-ip", "acme", "198.51.100.0/24").stdout
    assert postroom.json("partner", "show", "acme")["allow_ips"] == ["127.0.0.0/8", "198.51.100.0/24"]
    postroom.ok("partner", "allow-ip", "acme", "2001:db8::1")
    assert postroom.json("partner", "show", "acme")["allow_ips"][-1] == "2001:db8::1/128"

    postroom.ok("partner", "deny-ip", "acme", "198.51.100.0/24")
    assert postroom.json("partner", "show", "acme")["allow_ips"] == ["127.0.0.0/8", "2001:db8::1/128"]
    before = postroom.snapshot()
    assert "not in the allowlist" in postroom.refused("partner", "deny-ip", "acme", "198.51.100.0/24")
    assert postroom.snapshot() == before


def test_allow_ip_with_host_bits_set_suggests_the_network(postroom):
    """``10.1.2.3/8`` is refused with the network the admin most likely meant, and nothing is added."""
    before = postroom.snapshot()
    message = postroom.refused("partner", "allow-ip", "acme", "10.1.2.3/8")
    assert "did you mean 10.0.0.0/8" in message
    assert postroom.snapshot() == before


# -- certificates and SSH keys --------------------------------------------------------------------------


def test_cert_add_list_and_remove_by_typed_fingerprint(postroom, write_cert):
    """A certificate added with ``cert add`` is listed with its fingerprint and removed by it, colons or not."""
    path, cert = write_cert("acme-sign-2027", "sign", emails=["invoices@acme.example"])
    fp = fingerprint(cert)
    out = postroom.ok("partner", "cert", "add", "acme", "--usage", "sign", path).stdout
    assert fp in out and "acme" in out

    listing = postroom.json("partner", "cert", "list", "acme")
    assert all("id" in c for c in listing)
    assert sorted(c["usage"] for c in listing) == ["encrypt", "sign", "sign", "tls"]
    added = next(c for c in listing if c["id"] == fp)
    assert added["usage"] == "sign"
    assert added["fingerprint"] == fp
    assert added["not_after"] == cert.not_valid_after_utc.isoformat()

    assert fp in postroom.ok("partner", "cert", "list", "acme").stdout  # the human table too

    postroom.ok("partner", "cert", "remove", "acme", colon_upper(fp))
    remaining = postroom.json("partner", "cert", "list", "acme")
    assert fp not in {c["id"] for c in remaining}
    assert sorted(c["usage"] for c in remaining) == ["encrypt", "sign", "tls"]
    assert "no certificate" in postroom.refused("partner", "cert", "remove", "acme", fp)


def test_cert_add_of_a_ca_certificate_says_so(postroom):
    """Registering an issuing CA is reported as such (it vouches for every certificate it issues)."""
    ca = postroom.home.dev_ca / "ca.crt"
    out = postroom.ok("partner", "cert", "add", "globex", "--usage", "tls", ca).stdout
    assert "tls CA certificate" in out
    listed = postroom.json("partner", "cert", "list", "globex")
    assert sorted(c["ca"] for c in listed if c["usage"] == "tls") == [False, True]


def test_ssh_key_add_and_remove(postroom, ssh_key):
    """SSH keys are added from a .pub file or a key line and removed by their ``SHA256:`` fingerprint."""
    pub_path, from_file = ssh_key("acme-laptop")
    _, from_line = ssh_key("acme-server")
    assert from_file.fingerprint in postroom.ok("partner", "ssh-key", "add", "acme", pub_path).stdout
    postroom.ok("partner", "ssh-key", "add", "acme", f"{from_line.openssh} acme-server@test")
    fps = {k["fingerprint"] for k in postroom.json("partner", "show", "acme")["ssh_keys"]}
    assert {from_file.fingerprint, from_line.fingerprint} <= fps
    assert len(fps) == 3

    postroom.ok("partner", "ssh-key", "remove", "acme", from_file.fingerprint)
    postroom.ok("partner", "ssh-key", "remove", "acme", from_line.fingerprint.removeprefix("SHA256:"))
    remaining = {k["fingerprint"] for k in postroom.json("partner", "show", "acme")["ssh_keys"]}
    assert remaining == fps - {from_file.fingerprint, from_line.fingerprint}
    assert "no SSH key" in postroom.refused("partner", "ssh-key", "remove", "acme", from_file.fingerprint)


def test_ssh_key_file_named_like_a_key_type_is_read_as_a_file(postroom, ssh_key, tmp_path, monkeypatch):
    """A .pub file whose relative name starts with ``ssh-`` is a file to read, not a key line to parse."""
    original, key = ssh_key("globex-ops")
    monkeypatch.chdir(tmp_path)
    shutil.copy(original, tmp_path / "ssh-globex-ops.pub")
    postroom.ok("partner", "ssh-key", "add", "globex", "ssh-globex-ops.pub")
    assert key.fingerprint in {k["fingerprint"] for k in postroom.json("partner", "show", "globex")["ssh_keys"]}

    _, other = ssh_key("initech-ops")
    shutil.copy(tmp_path / "initech-ops.pub", tmp_path / "ecdsa-initech.pub")
    postroom.ok("partner", "add", "initech", "--name", "Initech", "--ssh-key", "ecdsa-initech.pub")
    assert [k["fingerprint"] for k in postroom.json("partner", "show", "initech")["ssh_keys"]] == [other.fingerprint]

    assert "ssh-missing.pub: no such file" in postroom.refused("partner", "ssh-key", "add", "acme", "ssh-missing.pub")


# -- policy -------------------------------------------------------------------------------------------


def test_policy_setting_is_stored_and_shown(postroom):
    """``partner policy ID NAME=true`` changes that one setting, for that one partner."""
    assert postroom.json("partner", "policy", "acme") == POLICY_DEFAULTS
    postroom.ok("partner", "policy", "acme", "require_xmldsig=true", "allow-opaque=yes")
    expected = POLICY_DEFAULTS | {"require_xmldsig": True, "allow_opaque": True}
    assert postroom.json("partner", "policy", "acme") == expected
    assert postroom.json("partner", "show", "acme")["policy"] == expected
    assert postroom.json("partner", "policy", "globex") == POLICY_DEFAULTS

    postroom.ok("partner", "policy", "acme", "require_xmldsig=false")
    assert postroom.json("partner", "policy", "acme")["require_xmldsig"] is False


def test_policy_with_an_unknown_setting_is_refused_and_changes_nothing(postroom):
    """One bad assignment among good ones leaves the whole policy as it was."""
    before = postroom.snapshot()
    message = postroom.refused("partner", "policy", "acme", "require_xmldsig=true", "require_xmldisg=true")
    assert "require_xmldisg" in message
    assert postroom.snapshot() == before


# -- delivery and AS2 options -------------------------------------------------------------------------


def test_partner_set_changes_delivery_and_as2_url_and_checks_them(postroom):
    """``partner set`` changes only what is given; push by AS2 needs an https URL and an AS2 ID."""
    assert "needs --as2-url" in postroom.refused("partner", "set", "acme", "--deliver", "as2")
    assert "https://" in postroom.refused("partner", "set", "acme", "--as2-url", "http://plain.example/as2")
    postroom.ok("partner", "set", "acme", "--deliver", "as2", "--as2-url", "https://acme.example/as2")
    shown = postroom.json("partner", "show", "acme")
    assert (shown["deliver"], shown["as2_url"], shown["name"]) == ("as2", "https://acme.example/as2",
                                                                   "ACME Corporation")
    assert "needs --as2-url" in postroom.refused("partner", "set", "acme", "--as2-url", "")
    postroom.ok("partner", "set", "acme", "--deliver", "mailbox", "--as2-url", "", "--name", "ACME")
    shown = postroom.json("partner", "show", "acme")
    assert (shown["deliver"], shown["as2_url"], shown["name"]) == ("mailbox", None, "ACME")


def test_partner_set_sftp_push_needs_a_valid_url_and_a_pinned_host_key(postroom, tmp_path):
    """``--deliver sftp`` needs both the URL and the host key; both are checked, shown, and removable."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    line = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    pub = tmp_path / "host.pub"
    pub.write_text(f"{line} root@files\n")
    assert "needs --sftp-url" in postroom.refused("partner", "set", "acme", "--deliver", "sftp")
    assert "sftp://" in postroom.refused("partner", "set", "acme", "--sftp-url", "https://files.example/in")
    assert "absolute directory" in postroom.refused("partner", "set", "acme", "--sftp-url", "sftp://u@files.example")
    assert "needs the server's pinned --sftp-host-key" in postroom.refused(
        "partner", "set", "acme", "--deliver", "sftp", "--sftp-url", "sftp://inv@files.example/in")
    assert "SFTP host key" in postroom.refused("partner", "set", "acme", "--sftp-host-key", "ssh-ed25519 AAAA")
    assert "no such file" in postroom.refused("partner", "set", "acme", "--sftp-host-key", "@/nonexistent.pub")
    assert postroom.json("partner", "show", "acme")["sftp_url"] is None
    postroom.ok("partner", "set", "acme", "--deliver", "sftp", "--sftp-url", "sftp://inv@files.example/in/",
                "--sftp-host-key", f"@{pub}")
    shown = postroom.json("partner", "show", "acme")
    assert (shown["deliver"], shown["sftp_url"], shown["sftp_host_key"]) == (
        "sftp", "sftp://inv@files.example:22/in", line)
    assert shown["sftp_host_key_fingerprint"].startswith("SHA256:")
    postroom.ok("partner", "set", "acme", "--sftp-url", "sftp://inv@files.example:2222/x", "--sftp-host-key", line)
    assert postroom.json("partner", "show", "acme")["sftp_url"] == "sftp://inv@files.example:2222/x"
    assert "needs --sftp-url" in postroom.refused("partner", "set", "acme", "--sftp-url", "")
    postroom.ok("partner", "set", "acme", "--deliver", "mailbox", "--sftp-url", "", "--sftp-host-key", "")
    shown = postroom.json("partner", "show", "acme")
    assert (shown["deliver"], shown["sftp_url"], shown["sftp_host_key"]) == ("mailbox", None, None)


def test_as2_options_are_checked_stored_as_changes_and_shown_whole(postroom):
    """``partner as2 ID k=v``: unknown names and values are refused naming the choices; defaults fill the rest."""
    assert postroom.json("partner", "as2", "acme")["cipher"] == "aes256-cbc"
    postroom.ok("partner", "as2", "acme", "cipher=aes128-gcm", "compress=true", "key-transport=rsa-oaep-sha256")
    shown = postroom.json("partner", "as2", "acme")
    assert (shown["cipher"], shown["compress"], shown["key_transport"], shown["digest"]) == (
        "aes128-gcm", True, "rsa-oaep-sha256", "sha256")
    assert "aes256-cbc" in postroom.refused("partner", "as2", "acme", "cipher=rc2")
    assert "true or false" in postroom.refused("partner", "as2", "acme", "compress=maybe")
    assert "NAME=VALUE" in postroom.refused("partner", "as2", "acme", "colour=blue")
    assert postroom.json("partner", "as2", "acme")["cipher"] == "aes128-gcm"


# -- PKI ----------------------------------------------------------------------------------------------


def test_pki_issue_writes_a_private_key_and_a_certificate_from_the_dev_ca(postroom, tmp_path):
    """``pki issue`` writes NAME.key (0600) and NAME.crt, and openssl verifies the cert against the home's CA."""
    out_dir = tmp_path / "issued"
    result = postroom.ok("pki", "issue", "initech-tls", "--usage", "tls-client", "--out", out_dir)
    key_path, cert_path = out_dir / "initech-tls.key", out_dir / "initech-tls.crt"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    cert = load_certificate(cert_path.read_bytes())
    assert f"fingerprint: {fingerprint(cert)}" in result.stdout
    certs_x509.load_key_and_certificate(key_path.read_bytes(), cert_path.read_bytes())  # they belong together
    assert cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
    )

    ca = postroom.home.path / "pki/dev-ca/ca.crt"
    verify = subprocess.run(["openssl", "verify", "-purpose", "sslclient", "-CAfile", ca, cert_path],
                            capture_output=True, text=True, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout.strip() == f"{cert_path}: OK"


def test_pki_issue_never_overwrites(postroom, tmp_path):
    """Issuing the same name twice into one folder is refused and keeps the first key."""
    postroom.ok("pki", "issue", "dup", "--usage", "sign", "--out", tmp_path)
    key = (tmp_path / "dup.key").read_bytes()
    assert "already exists" in postroom.refused("pki", "issue", "dup", "--usage", "sign", "--out", tmp_path)
    assert (tmp_path / "dup.key").read_bytes() == key


@pytest.mark.parametrize("usage", ["tls", "sign", "encrypt"])
def test_pki_export_prints_the_gateways_certificate(postroom, usage):
    """``pki export --usage U`` prints exactly the PEM of HOME/pki/U.crt, ready to mail to a partner."""
    result = postroom.ok("pki", "export", "--usage", usage)
    assert result.stdout == (postroom.home.pki / f"{usage}.crt").read_text()
    assert result.stdout.startswith("-----BEGIN CERTIFICATE-----\n")


# -- init and the home ----------------------------------------------------------------------------------


def test_init_refuses_an_existing_home(postroom):
    """``init`` on a home that exists is refused with a pointer to --force, and the home is untouched."""
    config = postroom.home.config_file.read_bytes()
    ca = (postroom.home.dev_ca / "ca.crt").read_bytes()
    before = postroom.snapshot()
    message = postroom.refused("init")
    assert "--force" in message
    assert str(postroom.home.path) in message
    assert postroom.home.config_file.read_bytes() == config
    assert (postroom.home.dev_ca / "ca.crt").read_bytes() == ca
    assert postroom.snapshot() == before


def test_init_force_starts_the_home_over(postroom):
    """``init --force`` replaces the keys (a new dev CA), the config and the database."""
    old_ca = fingerprint(load_certificate((postroom.home.dev_ca / "ca.crt").read_bytes()))
    result = postroom.ok("init", "--force", "--ephemeral-ports")
    assert f"Postroom home created in {postroom.home.path}" in result.stdout
    new_ca = fingerprint(load_certificate((postroom.home.dev_ca / "ca.crt").read_bytes()))
    assert new_ca != old_ca
    assert postroom.json("partner", "list") == []  # no --demo this time
    assert not postroom.home.demo.exists()
    tls = load_certificate((postroom.home.pki / "tls.crt").read_bytes())
    assert tls.issuer == load_certificate((postroom.home.dev_ca / "ca.crt").read_bytes()).subject


def test_home_falls_back_to_the_environment(postroom, tmp_path):
    """Without --home the POSTROOM_HOME variable names the home; an explicit --home wins over it."""
    runner = CliRunner(catch_exceptions=False)
    result = runner.invoke(cli, ["partner", "list", "--json"], env={"POSTROOM_HOME": str(postroom.home.path)})
    assert result.exit_code == 0, result.stderr
    assert [p["id"] for p in json.loads(result.stdout)] == ["acme", "globex"]

    result = postroom("partner", "list", "--json", env={"POSTROOM_HOME": str(tmp_path / "elsewhere")})
    assert result.exit_code == 0, result.stderr
    assert [p["id"] for p in json.loads(result.stdout)] == ["acme", "globex"]


def test_missing_home_says_to_run_init(tmp_path):
    """A home without postroom.toml is a user error naming the init command, and creates nothing."""
    missing = tmp_path / "nowhere"
    result = CliRunner(catch_exceptions=False).invoke(cli, ["--home", str(missing), "partner", "list"])
    assert result.exit_code == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(ERROR_PREFIX)
    assert f"run `postroom --home {missing} init`" in line
    assert not missing.exists()


# -- refusals: exit 1, one line, nothing changed ---------------------------------------------------------

UNKNOWN = "no partner with ID 'nobody'"

REFUSALS = {
    "malformed CIDR on add": (
        ["partner", "add", "newco", "--name", "New Co", "--allow-ip", "10.0.0.300/8"], "not an IP network"),
    "malformed CIDR on allow-ip": (["partner", "allow-ip", "acme", "banana"], "not an IP network"),
    "host bits set on add": (
        ["partner", "add", "newco", "--name", "New Co", "--allow-ip", "192.0.2.1/24"], "did you mean 192.0.2.0/24"),
    "missing cert file": (["partner", "add", "newco", "--name", "New Co", "--tls-cert", "{missing}"], "no such file"),
    "cert path is a folder": (["partner", "cert", "add", "acme", "--usage", "tls", "{folder}"], "is a directory"),
    "expired cert on add": (["partner", "add", "newco", "--name", "New Co", "--tls-cert", "{expired}"], "expired on"),
    "expired cert on cert add": (["partner", "cert", "add", "acme", "--usage", "sign", "{expired}"], "expired on"),
    "private key as cert on add": (
        ["partner", "add", "newco", "--name", "New Co", "--sign-cert", "{private_key}"],
        "holds a private key, not a certificate"),
    "private key as cert on cert add": (
        ["partner", "cert", "add", "acme", "--usage", "tls", "{private_key}"],
        "holds a private key, not a certificate"),
    "SSH private key as public key": (
        ["partner", "ssh-key", "add", "acme", "{ssh_private}"], "holds a private key"),
    "unknown partner show": (["partner", "show", "nobody"], UNKNOWN),
    "unknown partner show json": (["partner", "show", "nobody", "--json"], UNKNOWN),
    "unknown partner disable": (["partner", "disable", "nobody"], UNKNOWN),
    "unknown partner enable": (["partner", "enable", "nobody"], UNKNOWN),
    "unknown partner remove": (["partner", "remove", "nobody"], UNKNOWN),
    "unknown partner cert add": (["partner", "cert", "add", "nobody", "--usage", "tls", "{good_tls}"], UNKNOWN),
    "unknown partner cert list": (["partner", "cert", "list", "nobody"], UNKNOWN),
    "unknown partner ssh-key add": (["partner", "ssh-key", "add", "nobody", "{good_ssh}"], UNKNOWN),
    "unknown partner allow-ip": (["partner", "allow-ip", "nobody", "10.0.0.0/8"], UNKNOWN),
    "unknown partner deny-ip": (["partner", "deny-ip", "nobody", "127.0.0.0/8"], UNKNOWN),
    "unknown partner policy": (["partner", "policy", "nobody", "allow_sha1=true"], UNKNOWN),
    "duplicate partner ID": (["partner", "add", "acme", "--name", "ACME again"], "partner 'acme' already exists"),
    "duplicate AS2 ID": (
        ["partner", "add", "newco", "--name", "New Co", "--as2-id", "GLOBEX"],
        "AS2 ID 'GLOBEX' is already registered to partner 'globex'"),
    "duplicate email": (
        ["partner", "add", "newco", "--name", "New Co", "--email", "AP@globex.example"],
        "'ap@globex.example' is already registered to partner 'globex'"),
    "TLS cert of another partner on add": (
        ["partner", "add", "newco", "--name", "New Co", "--tls-cert", "{acme_tls}"],
        "is already registered to partner 'acme'"),
    "TLS cert of another partner on cert add": (
        ["partner", "cert", "add", "globex", "--usage", "tls", "{acme_tls}"],
        "is already registered to partner 'acme'"),
    "SSH key of another partner": (
        ["partner", "ssh-key", "add", "globex", "{acme_ssh}"], "is already registered to partner 'acme'"),
    "deliver as2 without URL": (
        ["partner", "add", "newco", "--name", "New Co", "--as2-id", "NEWCO", "--deliver", "as2"], "--as2-url"),
    "deliver as2 to plain http": (
        ["partner", "add", "newco", "--name", "New Co", "--as2-id", "NEWCO", "--deliver", "as2",
         "--as2-url", "http://newco.example/as2"], "must be an https:// URL"),
    "partner ID with a space": (["partner", "add", "new co", "--name", "New Co"], "partner ID 'new co'"),
    "partner ID in capitals": (["partner", "add", "NewCo", "--name", "New Co"], "partner ID 'NewCo'"),
    "partner ID starting with a dash": (["partner", "add", "--name", "New Co", "--", "-newco"], "partner ID '-newco'"),
    "bad participant ID": (
        ["partner", "add", "newco", "--name", "New Co", "--participant-id", "5790000000001"], "SCHEME:VALUE"),
    "bad cert fingerprint": (["partner", "cert", "remove", "acme", "abc"], "not a SHA-256 fingerprint"),
    "last certificate expired": (
        ["partner", "add", "newco", "--name", "New Co", "--as2-id", "NEWCO", "--allow-ip", "192.0.2.0/24",
         "--tls-cert", "{good_tls}", "--sign-cert", "{good_sign}", "--encrypt-cert", "{expired}"], "expired on"),
    "last certificate missing": (
        ["partner", "add", "newco", "--name", "New Co", "--tls-cert", "{good_tls}", "--sign-cert", "{good_sign}",
         "--encrypt-cert", "{missing}"], "no such file"),
    "last certificate taken": (
        ["partner", "add", "newco", "--name", "New Co", "--as2-id", "NEWCO", "--tls-cert", "{good_tls}",
         "--sign-cert", "{good_sign}", "--encrypt-cert", "{globex_encrypt}"], "already registered to partner 'globex'"),
    "last SSH key taken": (
        ["partner", "add", "newco", "--name", "New Co", "--tls-cert", "{good_tls}", "--ssh-key", "{good_ssh}",
         "--ssh-key", "{acme_ssh}"], "already registered to partner 'acme'"),
}


@pytest.fixture
def refusal_files(postroom, write_cert, expired_cert, private_key_file, ssh_key, tmp_path) -> dict[str, str]:
    """The files the refusal cases refer to by name."""
    demo = postroom.home.demo
    (tmp_path / "a-folder").mkdir()
    return {
        "missing": str(tmp_path / "no-such.pem"),
        "folder": str(tmp_path / "a-folder"),
        "expired": str(expired_cert[0]),
        "private_key": str(private_key_file),
        "ssh_private": str(demo / "acme/id_ed25519"),
        "good_tls": str(write_cert("newco-tls", "tls-client")[0]),
        "good_sign": str(write_cert("newco-sign", "sign")[0]),
        "good_ssh": str(ssh_key("newco")[0]),
        "acme_tls": str(demo / "acme/acme-tls.crt"),
        "acme_ssh": str(demo / "acme/id_ed25519.pub"),
        "globex_encrypt": str(demo / "globex/globex-encrypt.crt"),
    }


@pytest.mark.parametrize("case", REFUSALS)
def test_refusals_explain_in_one_line_and_change_nothing(postroom, refusal_files, case):
    """Each refusal exits 1 with one ``postroom: error:`` line naming the problem, and the directory is as before."""
    args, expected = REFUSALS[case]
    before = postroom.snapshot()
    message = postroom.refused(*(a.format(**refusal_files) for a in args))
    assert expected in message
    assert postroom.snapshot() == before
    assert "newco" not in {p["id"] for p in before["list"]}


# -- usage errors: exit 2 -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, expected",
    [
        (["partner", "add", "newco"], "Missing option '--name'"),
        (["partner", "add", "--name", "New Co"], "Missing argument 'ID'"),
        (["partner", "frob", "acme"], "No such command 'frob'"),
        (["frobnicate"], "No such command 'frobnicate'"),
        (["pki", "issue", "x", "--usage", "bogus", "--out", "out"], "Invalid value for '--usage'"),
        (["pki", "export", "--usage", "ssh"], "Invalid value for '--usage'"),
        (["partner", "cert", "add", "acme", "some.pem"], "Missing option '--usage'"),
        (["partner", "add", "newco", "--name", "New Co", "--deliver", "fax"], "Invalid value for '--deliver'"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_usage_errors_exit_2(postroom, args, expected):
    """A malformed command line is a usage error (exit 2) with click's usage hint, and changes nothing."""
    before = postroom.snapshot()
    result = postroom(*args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert expected in result.stderr
    assert "Usage: " in result.stderr
    assert postroom.snapshot() == before
