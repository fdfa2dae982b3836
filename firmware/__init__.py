# Makes firmware/ a CPython package too: the backend imports the node's rule engine as firmware.rules.
