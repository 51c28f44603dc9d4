"""Tests for :mod:`certs.ssh`: OpenSSH public key lines, their fingerprints, and demo key pairs."""

import base64
import shutil
import stat
import struct
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from certs.errors import CertificateError
from certs.ssh import SSHPublicKey, generate_keypair, normalize_fingerprint, parse_public_key


def openssh_line(key, comment: str = "") -> str:
    """The ``authorized_keys`` line of a private key's public half, as ssh-keygen writes it."""
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return public.decode("ascii") + (f" {comment}" if comment else "")


def ssh_string(data: bytes) -> bytes:
    """One length-prefixed field of the SSH wire format."""
    return struct.pack(">I", len(data)) + data


@pytest.fixture(scope="module")
def keys(dev_ca) -> dict:
    """One private key per accepted SSH key type (the RSA one is dev_ca's 2048-bit key, reused)."""
    return {
        "ssh-ed25519": ed25519.Ed25519PrivateKey.generate(),
        "ssh-rsa": dev_ca.key,
        "ecdsa-sha2-nistp256": ec.generate_private_key(ec.SECP256R1()),
        "ecdsa-sha2-nistp384": ec.generate_private_key(ec.SECP384R1()),
    }


@pytest.mark.parametrize("key_type", ["ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384"])
def test_accepted_key_types_parse(keys, key_type):
    """Ed25519, RSA 2048+ and ECDSA lines parse into type, raw blob and the canonical line."""
    line = openssh_line(keys[key_type], "alice@acme")
    parsed = parse_public_key(line, "alice.pub")
    assert isinstance(parsed, SSHPublicKey)
    assert parsed.key_type == key_type
    assert parsed.blob == base64.b64decode(line.split()[1])
    assert parsed.openssh == " ".join(line.split()[:2])
    assert parsed.comment == "alice@acme"


def test_comment_with_spaces_is_kept_and_whitespace_trimmed(keys):
    """The whole comment survives (it tells operators whose key it is); surrounding blanks do not."""
    line = openssh_line(keys["ssh-ed25519"], "Alice Smith  laptop key")
    parsed = parse_public_key(f"  {line}  \n")
    assert parsed.comment == "Alice Smith  laptop key"
    assert parse_public_key(openssh_line(keys["ssh-ed25519"])).comment == ""


@pytest.mark.parametrize("key_type", ["ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256"])
def test_fingerprint_equals_ssh_keygen(keys, key_type, tmp_path):
    """Our fingerprint is byte for byte what ``ssh-keygen -lf`` prints, so operators can compare them."""
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen is not installed")
    path = tmp_path / "key.pub"
    line = openssh_line(keys[key_type], "alice@acme")
    path.write_text(line + "\n")
    out = subprocess.run(["ssh-keygen", "-lf", str(path)], capture_output=True, text=True, check=True).stdout
    expected = out.split()[1]
    assert expected.startswith("SHA256:")
    assert parse_public_key(line).fingerprint == expected


def test_private_key_is_refused(keys):
    """Someone pasting their private key gets told to send the .pub instead."""
    private = keys["ssh-ed25519"].private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode("ascii")
    with pytest.raises(CertificateError, match=r"^id_ed25519 holds a private key; register the public key"):
        parse_public_key(private, "id_ed25519")


def test_dsa_key_is_refused():
    """ssh-dss keys are refused by type: DSA is no longer safe."""
    blob = ssh_string(b"ssh-dss") + b"".join(ssh_string(b"\x01" * n) for n in (129, 21, 129, 129))
    line = "ssh-dss " + base64.b64encode(blob).decode("ascii") + " old@box"
    with pytest.raises(CertificateError, match=r"^old\.pub: SSH key type 'ssh-dss' is not accepted$"):
        parse_public_key(line, "old.pub")


def test_short_rsa_key_is_refused():
    """RSA keys under 2048 bits are refused, with their size in the message."""
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the weak key under test
    with pytest.raises(CertificateError, match=r"^weak\.pub: RSA key of 1024 bits is too short \(need 2048\+\)$"):
        parse_public_key(openssh_line(weak, "weak"), "weak.pub")


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t, b64: f"{t} {b64[:-6]}!!!!!!",  # not base64
        lambda t, b64: f"{t} {base64.b64encode(base64.b64decode(b64)[:-8]).decode()}",  # truncated blob
        lambda t, b64: f"ssh-rsa {b64}",  # blob of another type
    ],
    ids=["bad-base64", "truncated", "type-mismatch"],
)
def test_damaged_key_is_refused(keys, mangle):
    """A key line damaged in copy-paste is reported as damaged, never accepted with a wrong blob."""
    key_type, b64 = openssh_line(keys["ssh-ed25519"]).split()
    with pytest.raises(CertificateError, match=r"^bob\.pub: damaged ssh-(ed25519|rsa) public key$"):
        parse_public_key(mangle(key_type, b64), "bob.pub")


@pytest.mark.parametrize("text", ["", "   \n", "ssh-ed25519", "AAAAC3NzaC1lZDI1NTE5AAAAI"])
def test_empty_or_partial_line_is_refused(text):
    """An empty file or a line without type and key is not a key line."""
    with pytest.raises(CertificateError, match=r"^bob\.pub is not an OpenSSH public key line$"):
        parse_public_key(text, "bob.pub")


def test_normalize_fingerprint_with_and_without_prefix(keys):
    """A fingerprint typed with or without ``SHA256:`` (any case) matches the key's fingerprint."""
    fp = parse_public_key(openssh_line(keys["ssh-ed25519"])).fingerprint
    bare = fp.removeprefix("SHA256:")
    for text in (fp, bare, f"sha256:{bare}", f"  {fp}\n"):
        assert normalize_fingerprint(text) == fp, text


def test_normalize_fingerprint_accepts_padded_base64(keys):
    """A fingerprint with base64 '=' padding (from openssl dgst | base64) matches the unpadded form."""
    fp = parse_public_key(openssh_line(keys["ssh-ed25519"])).fingerprint
    assert normalize_fingerprint(fp + "=") == fp
    assert normalize_fingerprint(fp.removeprefix("SHA256:") + "=") == fp


@pytest.mark.parametrize(
    "text",
    ["", "SHA256:", "SHA256:abc", "MD5:" + ":".join(["ab"] * 16), "SHA256:" + "!" * 43, "ab" * 32],
)
def test_normalize_fingerprint_refuses_other_text(text):
    """Anything that is not 32 bytes of base64 (an MD5, a hex digest, a typo) is refused."""
    with pytest.raises(CertificateError, match="is not an SSH SHA256 fingerprint"):
        normalize_fingerprint(text)


@pytest.mark.parametrize("kind, key_type", [("ed25519", "ssh-ed25519"), ("ecdsa", "ecdsa-sha2-nistp256")])
def test_generate_keypair_writes_private_0600_and_pub(tmp_path, kind, key_type):
    """generate_keypair writes an owner-only OpenSSH private key and a matching .pub line with the comment."""
    private = tmp_path / "host_key"
    public = generate_keypair(private, "gateway@postroom", kind)
    assert public.key_type == key_type
    assert public.comment == "gateway@postroom"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    pub_file = tmp_path / "host_key.pub"
    assert stat.S_IMODE(pub_file.stat().st_mode) == 0o644
    assert pub_file.read_text() == f"{public.openssh} gateway@postroom\n"
    assert parse_public_key(pub_file.read_text()) == public
    loaded = serialization.load_ssh_private_key(private.read_bytes(), password=None)
    assert openssh_line(loaded) == public.openssh


def test_generated_private_key_loads_in_ssh_keygen(tmp_path):
    """OpenSSH itself reads the generated private key and derives the same public key from it."""
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen is not installed")
    private = tmp_path / "id_ed25519"
    public = generate_keypair(private, "demo")
    out = subprocess.run(["ssh-keygen", "-y", "-f", str(private)], capture_output=True, text=True, check=True).stdout
    assert " ".join(out.split()[:2]) == public.openssh


def test_generate_keypair_refuses_unknown_kind(tmp_path):
    """An unknown key kind is refused before anything is written."""
    with pytest.raises(CertificateError, match=r"^unknown SSH key kind 'dsa'$"):
        generate_keypair(tmp_path / "key", "demo", "dsa")
    assert list(tmp_path.iterdir()) == []
