"""The `edge-evolver` command line, and how it talks to a terminal.

- app.py            the app and the commands that need no broker: `info`, `bench`
- mqtt_commands.py  `serve` (the daemon), `monitor` (a live table of the fleet) and `pack` (a job file)
- monitor.py        the fleet table `monitor` and `host-trainer watch` draw from the MQTT topics
- keys.py           `keys`: the board's key pair and the host keys it trusts
- support.py        one-line errors for every usage mistake (shared with `host-trainer`)
"""
