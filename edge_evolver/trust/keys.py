"""Ed25519 key pairs and the lists of trusted public keys.

Formats (docs/security.md):

- a private key is a PKCS#8 PEM file, mode 0600 (``openssl pkey -in board.key -noout -text`` reads it);
- a public key is one line, ``ed25519:<base64 of the 32 raw bytes>``, short enough to paste;
- a key id is the first 16 hex digits of the SHA-256 of the raw public key; it names the key in
  signatures, so a board finds the one key to try instead of trying each;
- a trust file holds one public key per line, optionally followed by a comment (``# ...``).

cryptography is imported lazily so that the measuring CLI commands start without it, and a
board installed without it gets one clear line instead of a traceback.
"""

import base64
import binascii
import hashlib
import os
import warnings
from typing import Any, Dict, List, Optional, Tuple

from ..errors import EdgeError, ErrorCode
from ..files import atomic_write

PUBLIC_PREFIX = "ed25519:"
KEY_ID_HEX = 16
SIGNATURE_BYTES = 64
INSTALL_HINT = "pip install 'cryptography>=40.0.2' (40.0.2 is the last release for Python 3.6)"


def _ed25519() -> Any:
    try:
        with warnings.catch_warnings():
            # cryptography 40 warns on import that Python 3.6 is deprecated: known and pinned on JetPack 4.6,
            # and a line in every `edge-evolver` command's output there would only hide real warnings.
            warnings.filterwarnings("ignore", message=".*Python 3.6 is no longer supported.*")
            from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise EdgeError(ErrorCode.BACKEND_UNAVAILABLE, "signed jobs need the cryptography package: "
                        + INSTALL_HINT) from None
    return ed25519


class PublicKey:
    """A public key that verifies signatures; equal keys compare equal."""

    def __init__(self, raw: bytes) -> None:
        if len(raw) != 32:
            raise ValueError(f"an Ed25519 public key has 32 bytes, not {len(raw)}")
        self.raw = bytes(raw)
        self.key_id = hashlib.sha256(self.raw).hexdigest()[:KEY_ID_HEX]
        self._key: Any = None

    @property
    def text(self) -> str:
        return PUBLIC_PREFIX + base64.b64encode(self.raw).decode("ascii")

    def verify(self, signature: bytes, message: bytes) -> bool:
        if self._key is None:
            self._key = _ed25519().Ed25519PublicKey.from_public_bytes(self.raw)
        try:
            self._key.verify(bytes(signature), bytes(message))
        except Exception:  # InvalidSignature, or a malformed signature
            return False
        return True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def __repr__(self) -> str:
        return f"PublicKey({self.key_id})"


def parse_public_key(text: str) -> PublicKey:
    """``ed25519:<base64>`` (surrounding blanks and a trailing comment allowed); ValueError otherwise."""
    word = text.split("#", 1)[0].strip().split()
    if len(word) != 1 or not word[0].startswith(PUBLIC_PREFIX):
        raise ValueError(f"not a public key: expected '{PUBLIC_PREFIX}<base64>', got {text.strip()[:60]!r}")
    try:
        raw = base64.b64decode(word[0][len(PUBLIC_PREFIX):].encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError(f"public key {word[0][:60]!r} is not valid base64") from None
    return PublicKey(raw)


class SigningKey:
    """A private key; ``public`` is its public half."""

    def __init__(self, private: Any) -> None:
        self._private = private
        raw = private.public_key().public_bytes(*_raw_public_format())
        self.public = PublicKey(raw)

    @property
    def key_id(self) -> str:
        return self.public.key_id

    def sign(self, message: bytes) -> bytes:
        return bytes(self._private.sign(bytes(message)))

    def pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return bytes(self._private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))

    def save(self, path: str) -> None:
        """Write the key, 0600, atomically; the folder is made 0700 when it has to be created."""
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o700)
        atomic_write(path, self.pem(), fsync=True, mode=0o600)


def _raw_public_format() -> Tuple[Any, Any]:
    from cryptography.hazmat.primitives import serialization

    return serialization.Encoding.Raw, serialization.PublicFormat.Raw


def generate_key() -> SigningKey:
    return SigningKey(_ed25519().Ed25519PrivateKey.generate())


def load_signing_key(path: str) -> SigningKey:
    """The private key in ``path``; EdgeError(BAD_INPUT) naming the file when it is missing or not one."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise EdgeError(ErrorCode.BAD_INPUT, f"cannot read key file '{path}': {exc.strerror or exc}") from None
    ed25519 = _ed25519()
    from cryptography.hazmat.primitives import serialization

    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise EdgeError(ErrorCode.BAD_INPUT, f"key file '{path}' is not an unencrypted PEM private key "
                        f"({type(exc).__name__})") from None
    if not isinstance(private, ed25519.Ed25519PrivateKey):
        raise EdgeError(ErrorCode.BAD_INPUT, f"key file '{path}' holds a {type(private).__name__}, not Ed25519")
    return SigningKey(private)


def ensure_signing_key(path: str) -> Tuple[SigningKey, bool]:
    """(the key in ``path``, whether it was just made): made once, never overwritten."""
    if os.path.exists(path):
        return load_signing_key(path), False
    key = generate_key()
    key.save(path)
    return key, True


class TrustedKeys:
    """The public keys a trust file lists: ``find(key_id)`` or None. Two keys at once is how a
    host key is rotated: trust the new one, move the hosts over, then remove the old one."""

    def __init__(self, entries: Optional[List[Tuple[PublicKey, str]]] = None) -> None:
        self.entries: List[Tuple[PublicKey, str]] = list(entries or [])
        self._by_id: Dict[str, PublicKey] = {key.key_id: key for key, _ in self.entries}

    def find(self, key_id: str) -> Optional[PublicKey]:
        return self._by_id.get(key_id)

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, PublicKey) and key.key_id in self._by_id


class TrustFileError(ValueError):
    """A trust file's first malformed line: ``line`` (from 1), and ``detail``, which quotes the line."""

    def __init__(self, line: int, detail: str) -> None:
        super().__init__(f"line {line}: {detail}")
        self.line, self.detail = line, detail


def parse_trusted(text: str) -> TrustedKeys:
    """The keys of a trust file's text; TrustFileError at its first malformed line."""
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.split("#", 1)[0].strip():
            continue
        try:
            key = parse_public_key(line)
        except ValueError as exc:
            raise TrustFileError(number, str(exc)) from None
        entries.append((key, line.split("#", 1)[1].strip() if "#" in line else ""))
    return TrustedKeys(entries)


def read_trusted(path: str) -> TrustedKeys:
    """A trust file; a missing file is an empty list, a malformed line an EdgeError naming it."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        return TrustedKeys()
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgeError(ErrorCode.BAD_INPUT, f"cannot read trust file '{path}': {exc}") from None
    try:
        return parse_trusted(text)
    except TrustFileError as exc:
        raise EdgeError(ErrorCode.BAD_INPUT, f"{path}:{exc.line}: {exc.detail}") from None


def add_trusted(path: str, key: PublicKey, comment: str = "") -> bool:
    """Append ``key`` to a trust file (made 0644 when new); False when it was already there."""
    trusted = read_trusted(path)
    if key in trusted:
        return False
    clean = " ".join(comment.replace("#", " ").split())
    lines = [f"{k.text}  # {c}" if c else k.text for k, c in trusted.entries]
    lines.append(f"{key.text}  # {clean}" if clean else key.text)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    atomic_write(path, ("\n".join(lines) + "\n").encode("utf-8"), fsync=True, mode=0o644)
    return True


def remove_trusted(path: str, key_id: str) -> bool:
    """Drop the key with this id (or id prefix of 8+ digits) from a trust file; False when absent."""
    trusted = read_trusted(path)
    keep = [(k, c) for k, c in trusted.entries if not (len(key_id) >= 8 and k.key_id.startswith(key_id))]
    if len(keep) == len(trusted.entries):
        return False
    lines = [f"{k.text}  # {c}" if c else k.text for k, c in keep]
    atomic_write(path, ("\n".join(lines) + "\n" if lines else "").encode("utf-8"), fsync=True, mode=0o644)
    return True
