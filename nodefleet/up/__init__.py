"""``nodefleet up``: the whole system in one process (the command itself is ``nodefleet/cli/up.py``).

- ``system.py``: :class:`Runtime`, the start and stop order; :func:`run`, with the signals
- ``options.py``: what to run (:class:`RuntimeOptions`), where it is once up (:class:`RuntimeInfo`), default ports
- ``database.py``: an external PostgreSQL probed, or the embedded one (its password from ``LocalCredentials``)
- ``broker.py``: an external broker probed, or the embedded amqtt
- ``logins.py``: who logs in to the embedded broker with what
- ``services.py``: the plain list of services, loading them, supervising each
- ``edge.py``: the provisioner's HTTP edge port
- ``lock.py``: one ``nodefleet up`` per data directory
- ``errors.py``: the errors and exit codes
"""
