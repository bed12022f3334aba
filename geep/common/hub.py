"""Whether the Hugging Face hub can be used right now, answered fast.

Both ``datasets`` and ``transformers`` retry an unreachable hub for about 25 s before failing;
the suite asks this first and fails in one line instead.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from urllib.parse import urlsplit
from urllib.request import getproxies

from huggingface_hub import constants as hf_constants

_TRUE = {"1", "ON", "YES", "TRUE"}


def hub_unavailable_reason(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be used now (offline flag set, or no connection), or None.

    Checked before ``datasets`` is called, which otherwise retries for about 25 s. The probe opens
    a TCP connection to the hub (or the HTTPS proxy) in a daemon thread, so even a hanging DNS
    lookup costs at most ``timeout`` seconds.
    """
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in _TRUE:
            return f"{var} is set"
    url = urlsplit(getproxies().get("https") or hf_constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    reached = threading.Event()

    def probe() -> None:
        with contextlib.suppress(OSError), socket.create_connection((url.hostname, port), timeout):
            reached.set()

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return None if reached.is_set() else f"no connection to {url.hostname}:{port}"
