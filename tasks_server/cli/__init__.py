"""The ``tasks-server`` command: ``main`` parses it and runs the server, ``client`` talks to
a running server over HTTP, ``tasks`` and ``cron`` are the client commands, ``output``
prints their answers."""
