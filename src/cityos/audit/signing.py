"""The deployment's Ed25519 key: made on first start (mode 0600), signing checkpoints and truncation
anchors; its public half is what an auditor verifies an export with (`cityos audit pubkey`).

Signatures are over a domain prefix and the canonical form (chain.canonical), so a checkpoint's
signature can never pass for an anchor's or the other way round.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cityos.audit.chain import AuditCheckpoint, AuditRecord, canonical

CHECKPOINT_DOMAIN = b"cityos-audit-checkpoint\n"
ANCHOR_DOMAIN = b"cityos-audit-truncation\n"


def key_path(database: str, configured: str) -> Path:
    """Where the key lives: the audit_key setting, else next to a SQLite file
    (`<file>.audit-key`), else `cityos-audit.key` in the working directory (PostgreSQL: set
    --audit-key to a path every worker and host of the deployment shares)."""
    if configured:
        return Path(configured).expanduser()
    if database.startswith(("postgresql://", "postgres://")):
        return Path("cityos-audit.key")
    return Path(database + ".audit-key").expanduser()


def load_or_create(path: Path) -> Ed25519PrivateKey:
    """The private key at `path`, made there (0600, atomically: concurrent workers agree) if absent."""
    if not path.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        folder = path.absolute().parent
        descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=".audit-key-")
        try:
            os.fchmod(descriptor, 0o600)
            os.write(descriptor, pem)
            os.fsync(descriptor)
            os.close(descriptor)
            with contextlib.suppress(FileExistsError):  # another worker made it first: use that one
                os.link(temporary, path)
        finally:
            os.unlink(temporary)
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ValueError(f"{path} does not hold an Ed25519 private key")
    return loaded


def public_pem(key: Ed25519PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def load_public(pem: bytes) -> Ed25519PublicKey:
    loaded = serialization.load_pem_public_key(pem)
    if not isinstance(loaded, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return loaded


def key_id(public: Ed25519PublicKey) -> str:
    """A short name of the key (SHA-256 of its raw bytes, 16 hex digits), carried by checkpoints."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _sign(key: Ed25519PrivateKey, domain: bytes, value: dict[str, Any]) -> str:
    return base64.b64encode(key.sign(domain + canonical(value))).decode()


def _valid(public: Ed25519PublicKey, domain: bytes, value: dict[str, Any], signature: str) -> bool:
    try:
        public.verify(base64.b64decode(signature, validate=True), domain + canonical(value))
    except (InvalidSignature, ValueError):
        return False
    return True


def sign_checkpoint(key: Ed25519PrivateKey, checkpoint: AuditCheckpoint) -> AuditCheckpoint:
    checkpoint.key_id = key_id(key.public_key())
    checkpoint.signature = _sign(key, CHECKPOINT_DOMAIN, checkpoint.signed_part())
    return checkpoint


def checkpoint_valid(public: Ed25519PublicKey, checkpoint: AuditCheckpoint) -> bool:
    return _valid(public, CHECKPOINT_DOMAIN, checkpoint.signed_part(), checkpoint.signature)


def _anchor_part(anchor: AuditRecord) -> dict[str, Any]:
    return {k: v for k, v in anchor.as_dict().items() if k != "signature"}


def sign_anchor(key: Ed25519PrivateKey, anchor: AuditRecord) -> AuditRecord:
    """A truncation anchor is signed whole, its `hash` (the last removed record's) included."""
    anchor.signature = _sign(key, ANCHOR_DOMAIN, _anchor_part(anchor))
    return anchor


def anchor_valid(public: Ed25519PublicKey, anchor: AuditRecord) -> bool:
    return anchor.signature is not None and _valid(public, ANCHOR_DOMAIN, _anchor_part(anchor), anchor.signature)
