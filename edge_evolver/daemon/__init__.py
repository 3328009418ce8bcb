"""`edge-evolver serve`: the device daemon.

- config.py   ServeConfig: config file + environment + command line, validated once
- gate.py     who may have a job run: signed jobs opened with the trusted host keys, the replay ledger,
              the board's signature on every result (docs/security.md)
- intake.py   the pace of answers to jobs no trusted key vouched for (a flood gets a few, not one each)
- jobstore.py the on-disk spool (a job is stored before it is acknowledged) and stored results
- runner.py   the measuring child process (all runtime/CUDA work on its one thread) and its client
- containment.py  the child's private per-job directory and memory limit
- outbox.py   results leave the spool only once the broker acknowledged them; none above 1 MiB, none wedges it
- payloads.py status, telemetry and result payloads
- service.py  MQTT intake, the worker, telemetry, status and shutdown
"""
