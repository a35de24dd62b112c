"""archety-relay: relays new iMessages from the macOS Messages database to the Archety backend."""

__version__ = "0.1.0"
