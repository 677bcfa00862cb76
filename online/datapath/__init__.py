"""The data path of a run: events in, trigger decisions out, accepted events on disk.

Owns the wire format and the internal socket protocols (``wire``, ``protocol``), the event
sources, the credit-based broker (``dispatcher``), the worker process and its backends, the
trigger menu, the collector, storage and the ``Pipeline`` that starts and stops them in order.
May import the ``l1forge.online`` root modules (config, security), ``l1forge.models``,
``l1forge.sim`` and (lazily, for the rtl/pynq backends) ``l1forge.firmware``; never run
control, DQM, learning or the web endpoint.
"""
