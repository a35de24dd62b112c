"""Pictures on their way to the backend's `POST /photo/upload`.

    rules        which attachments are pictures, whether one is ready, what an upload answer
                 means: pure functions over values
    conversion   the only user of Pillow, pillow-heif and `sips`: HEIC and friends into JPEG/PNG
    upload       the settle step before a message goes, and the follow-up after

May import: chatdb, store, backend, config and the top-level values.
"""
