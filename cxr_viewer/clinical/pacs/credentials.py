"""PACS passwords in the OS keyring (service ``"cxr_viewer"``), keyed by node name + user name."""

from __future__ import annotations

from cxr_viewer.clinical.pacs.nodes import CredentialStoreUnavailable, PacsNode

KEYRING_SERVICE = "cxr_viewer"



def _key(node: PacsNode) -> str:
    return f"{node.name}::{node.username}"


def _keyring():
    try:
        import keyring
        from keyring.backends import fail
    except Exception:  # pragma: no cover - keyring is a dependency
        raise CredentialStoreUnavailable("no credential store: the 'keyring' package is missing") from None
    try:
        backend = keyring.get_keyring()
    except Exception:
        raise CredentialStoreUnavailable("no OS credential store (keyring) is available") from None
    if isinstance(backend, fail.Keyring):
        raise CredentialStoreUnavailable("no OS credential store (keyring) is available on this system; "
                                         "the password is kept for this session only")
    return keyring


def get_password(node: PacsNode) -> str | None:
    """The stored password of ``node`` (its name + user name), or None (also when no keyring exists)."""
    try:
        kr = _keyring()
        return kr.get_password(KEYRING_SERVICE, _key(node))
    except Exception:
        return None


def set_password(node: PacsNode, password: str) -> None:
    """Store the password in the OS keyring; :class:`CredentialStoreUnavailable` when there is none."""
    kr = _keyring()
    try:
        kr.set_password(KEYRING_SERVICE, _key(node), password)
    except Exception as exc:
        from keyring.errors import NoKeyringError

        if isinstance(exc, NoKeyringError):
            raise CredentialStoreUnavailable("no OS credential store (keyring) is available on this system; "
                                             "the password is kept for this session only") from None
        raise CredentialStoreUnavailable(f"the OS credential store refused to save the password "
                                         f"({exc.__class__.__name__})") from None


def delete_password(node: PacsNode) -> None:
    """Forget the stored password (nothing happens when none is stored or no keyring exists)."""
    try:
        kr = _keyring()
        kr.delete_password(KEYRING_SERVICE, _key(node))
    except Exception:
        pass
