"""Optional HMAC-SHA256 signatures of model bundles: tamper evidence, not just corruption.

A bundle's ``model.json`` lists the sha256 of its weight and array files; that catches a
damaged or swapped file, but whoever can write the folder can rewrite ``model.json`` too.
With a key (``PBI_MODEL_KEY`` in the environment, or passed explicitly), :func:`sign`
writes ``model.json.hmac`` = HMAC-SHA256(key, bytes of model.json), and loading verifies it:
a bundle without a valid signature is refused. Without a key nothing is signed or checked
(and docs/design.md says exactly that: the sha256 values then detect corruption, not tampering).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

__all__ = ["ENV_KEY", "SIGNATURE", "SignatureError", "model_key", "sign", "verify"]

ENV_KEY = "PBI_MODEL_KEY"
SIGNATURE = "model.json.hmac"


class SignatureError(ValueError):
    """A bundle's signature is missing or does not match its model.json."""


def model_key(explicit: str | bytes | None = None) -> bytes | None:
    """Return the signing key: ``explicit``, else ``$PBI_MODEL_KEY``, else ``None`` (no signing)."""
    key = explicit if explicit is not None else os.environ.get(ENV_KEY)
    if not key:
        return None
    return key if isinstance(key, bytes) else key.encode()


def _digest(root: Path, key: bytes) -> str:
    return hmac.new(key, (root / "model.json").read_bytes(), hashlib.sha256).hexdigest()


def sign(model_dir: str | Path, key: str | bytes | None = None) -> Path | None:
    """Write ``model.json.hmac`` for a bundle (``None`` when there is no key)."""
    k = model_key(key)
    if k is None:
        return None
    root = Path(model_dir)
    path = root / SIGNATURE
    path.write_text(_digest(root, k) + "\n")
    return path


def verify(model_dir: str | Path, key: str | bytes | None = None) -> bool:
    """Check a bundle's signature when a key is configured.

    Returns True when verified, False when there is no key (nothing checked).

    Raises
    ------
    SignatureError
        Key configured and the signature is missing or wrong.
    """
    k = model_key(key)
    if k is None:
        return False
    root = Path(model_dir)
    path = root / SIGNATURE
    if not path.is_file():
        raise SignatureError(f"{root}: no {SIGNATURE}, but {ENV_KEY} is set: an unsigned "
                             "bundle is refused (sign it with `python -m "
                             "pbi_bluesky.models.signing BUNDLE` holding the key)")
    if not hmac.compare_digest(path.read_text().strip(), _digest(root, k)):
        raise SignatureError(f"{root}: model.json does not match its signature (tampered, or "
                             "signed with another key)")
    return True


def main(argv: list[str] | None = None) -> None:
    """``python -m pbi_bluesky.models.signing BUNDLE...``: sign with ``$PBI_MODEL_KEY``."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if model_key() is None:
        raise SystemExit(f"set {ENV_KEY} to the signing key")
    for folder in args:
        print(sign(folder))


if __name__ == "__main__":
    main()
