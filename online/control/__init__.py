"""Run control and the daemon: the state machine, the JSON control socket, the CLI.

Owns ``runcontrol`` (states, run numbers, run folders), ``commands`` (control socket server and
client), ``daemon`` (the foreground process) and the ``l1forge online`` sub-commands (``cli``,
``model_cli``). The top of the online layers: may import every other ``l1forge.online``
subpackage; nothing in them imports this one.
"""
