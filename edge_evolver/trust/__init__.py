"""Who may ask a board for what: Ed25519 keys, signed jobs, the replay ledger and signed results.

- keys.py: key pairs, the public-key line format, trust files;
- jobs.py: the signed-job envelope, sealed by the host and opened (verified) by the board;
- replay.py: the board's durable ledger of accepted signed jobs;
- results.py: signatures on results, checked by the host against enrolled board keys.

docs/security.md has the threat model and the set-up of a fleet.
"""
