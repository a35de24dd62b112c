"""Whether this process may send Apple events to Messages, asked *without* a prompt.

`AEDeterminePermissionToAutomateTarget(target, '****', '****', askUserIfNeeded=false)` answers
from TCC's records and never shows the consent dialog (the non-interactive probe
openclaw/AXorcist#23 switched to). Answers: 0 allowed; -1743 (errAEEventNotPermitted) denied;
-1744 (errAEEventWouldRequireUserConsent) nobody answered yet — and also what a denial can come
back as when askUserIfNeeded is false (openradar 44049802), so both mean "not allowed";
-600 (procNotFound) when Messages is not running: no information (BasedHardware/omi#12625).
A process caches its answer until it restarts (openradar 44159926), so a grant made in Settings
while the relay runs is seen by `automation-check` (a fresh osascript) or by the next send.
The call is attributed to the responsible process: under the LaunchAgent, "Archety Relay".
Only on macOS; elsewhere the answer is None. Not run on a Mac.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

MESSAGES_BUNDLE_ID = "com.apple.MobileSMS"
ALLOWED = 0
NOT_PERMITTED = -1743
NEEDS_CONSENT = -1744
NOT_RUNNING = -600
_CORE_SERVICES = "/System/Library/Frameworks/CoreServices.framework/CoreServices"


def _fourcc(code: bytes) -> int:
    return int.from_bytes(code, "big")


class _AEDesc(ctypes.Structure):
    _fields_ = [("descriptorType", ctypes.c_uint32), ("dataHandle", ctypes.c_void_p)]


def determine(bundle_id: str = MESSAGES_BUNDLE_ID) -> int | None:
    """The OSStatus TCC gives for sending any Apple event to `bundle_id`; None when the API
    cannot be reached (not macOS)."""
    try:
        lib: Any = ctypes.CDLL(_CORE_SERVICES)
    except OSError:
        return None
    create = lib.AECreateDesc
    create.argtypes = [ctypes.c_uint32, ctypes.c_void_p, ctypes.c_long, ctypes.POINTER(_AEDesc)]
    create.restype = ctypes.c_int16
    ask = lib.AEDeterminePermissionToAutomateTarget
    ask.argtypes = [ctypes.POINTER(_AEDesc), ctypes.c_uint32, ctypes.c_uint32, ctypes.c_bool]
    ask.restype = ctypes.c_int32
    dispose = lib.AEDisposeDesc
    dispose.argtypes = [ctypes.POINTER(_AEDesc)]
    dispose.restype = ctypes.c_int16
    data = bundle_id.encode()
    target = _AEDesc()
    if create(_fourcc(b"bund"), data, len(data), ctypes.byref(target)) != 0:
        return None
    try:
        return int(ask(ctypes.byref(target), _fourcc(b"****"), _fourcc(b"****"), False))
    finally:
        dispose(ctypes.byref(target))
