"""The stand-ins for the demo, the tests and the benchmarks: Messages.app writing chat.db, the
backend on loopback, an iPhone's camera. Nothing here runs in the relay itself.

May import: chatdb (the schema's rows and typedstream encoder) and the top-level values.
"""
