"""Whether the Hugging Face hub can be reached, decided once per process.

Every hub download (the aligner, SylReg, HF encoders, the text-to-token model, the trainer's base
model, hf:// inputs) asks `hub_offline()` first. Without a network, huggingface_hub would retry
each file for ~30 s before giving up; here the hub is offline when HF_HUB_OFFLINE is set, or when
its endpoint (HF_ENDPOINT; through the HTTPS proxy when one is set) does not take a TCP connection
within `SYLM_HUB_PROBE_S` seconds (default 1). Offline, the loaders read the local hub cache only
(`local_files_only=True`, HF_HUB_OFFLINE's semantics): a model fetched before still loads, and one
that was not fails at once with its loader's one-line advice.
"""

import functools
import os
import re
import socket
import threading
import urllib.parse
import urllib.request
from pathlib import Path

PROBE_ENV = "SYLM_HUB_PROBE_S"
PROBE_S = 1.0
_TRUE = {"1", "ON", "YES", "TRUE"}
# what a hub repo id looks like (`name` or `owner/name`), as opposed to a local path
_REPO_ID = re.compile(r"[\w][\w.-]*(/[\w][\w.-]*)?")


def forced() -> bool:
    """HF_HUB_OFFLINE is set (read as huggingface_hub reads it, also when set after its import)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE


def hub_offline() -> bool:
    """True when downloads must come from the local hub cache: HF_HUB_OFFLINE, or no answer from the hub."""
    if forced():
        return True
    from huggingface_hub import constants

    return not _reachable(constants.ENDPOINT, float(os.environ.get(PROBE_ENV, PROBE_S)))


def local_only(model: str | os.PathLike) -> bool:
    """`local_files_only` for loading `model`: a local folder never needs the hub (no probe), a hub
    id only reads the cache while the hub is offline."""
    return Path(model).is_dir() or hub_offline()


def reason(error: BaseException, model: str | os.PathLike) -> str:
    """Why `model` could not be fetched, in one line: a hub id missing from the cache while offline
    says so (huggingface_hub's own words name neither), other errors give their first line."""
    if isinstance(error, OSError) and _REPO_ID.fullmatch(str(model)) and not Path(model).exists() and hub_offline():
        why = "HF_HUB_OFFLINE is set" if forced() else "no network"
        return f"not in the local hub cache, and the hub cannot be reached ({why})"
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@functools.cache
def _reachable(endpoint: str, timeout_s: float) -> bool:
    """Whether `endpoint`'s host (or the proxy to it) takes a TCP connection within `timeout_s`; the
    name lookup counts too (a thread, since getaddrinfo takes no timeout)."""
    url = urllib.parse.urlsplit(endpoint)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    if not host:
        return False
    proxy = urllib.request.getproxies().get(url.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxied = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxied.hostname or host, proxied.port or 80
    answered: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            answered.append(True)
        except OSError:
            answered.append(False)

    probe = threading.Thread(target=connect, name="sylm-hub-probe", daemon=True)
    probe.start()
    probe.join(timeout_s)
    return bool(answered and answered[0])
