"""The Mac's Contacts, read only: the names the owner gave the people who write.

    reader     the only code that opens the address book files (`AddressBook-v22.abcddb`):
               one index {E.164 number | e-mail → name}, re-read when a file changes
    names      the `sender_name` / `participant_names` a message carries

Names are personal data: no log line at info or above holds one. May import: `phones` and the
top-level values.
"""
