"""Host-name lookup bounded by a node's timeout, shared by DIMSE and DICOMweb.

The system resolver (``getaddrinfo``) has no timeout of its own and neither pynetdicom nor
requests bounds it, so a dead DNS server could hang a PACS operation for minutes. The lookup
runs on a daemon thread that is abandoned when it takes longer than the node's timeout.
"""

from __future__ import annotations

import ipaddress
import socket
import threading

from cxr_viewer.clinical.pacs.nodes import PacsError, PacsNode, _fmt_s


def _resolve_host(node: PacsNode, host: str, port: int) -> str:
    """``host``'s IP address (IPv4 preferred), looked up within ``node.timeout_s``.

    A clear :class:`PacsError` when the lookup fails or takes too long. An IP address literal
    is returned as it is.
    """
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    result: list = []

    def lookup() -> None:
        try:
            result.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except (OSError, UnicodeError) as exc:
            result.append(exc)

    worker = threading.Thread(target=lookup, daemon=True, name="pacs-dns")
    worker.start()
    worker.join(node.timeout_s)
    if not result:
        raise PacsError(f"looking up host name '{host}' of PACS '{node.name}' took longer than "
                        f"{_fmt_s(node.timeout_s)}")
    if isinstance(result[0], BaseException) or not result[0]:
        raise PacsError(f"cannot resolve host name '{host}' of PACS '{node.name}' (check the host name "
                        "and the network)")
    infos = result[0]
    for family in (socket.AF_INET, socket.AF_INET6):
        for info in infos:
            if info[0] == family:
                return info[4][0]
    return infos[0][4][0]
