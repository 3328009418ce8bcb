"""`edge-evolver serve`: the device daemon.

- config.py   ServeConfig: config file + environment + command line, validated once
- jobstore.py the on-disk spool (a job is stored before it is acknowledged) and stored results
- runner.py   the measuring child process (all runtime/CUDA work on its one thread) and its client
- service.py  MQTT intake, the worker, telemetry, status and shutdown
"""
