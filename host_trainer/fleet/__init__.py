"""Measuring offspring on devices, and watching them.

- jobs.py         each offspring as an MQTT job: stable ids, timeouts, retries, failover, kept results
- binding.py      which answers the host believes: bound to the board, payload and sequence it sent
- measurers.py    device (over the fleet) or in-process measurement, as generation-record fields
- local_fleet.py  the embedded default: Mosquitto on a free loopback port and one local `edge-evolver serve`
- trust.py        the host's signing key, the board keys it enrolled, and the checks on signed results
- watch.py        `host-trainer watch`: runs and devices from the MQTT topics
"""
