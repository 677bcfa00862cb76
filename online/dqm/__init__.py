"""Data-quality monitoring: histograms per lumisection against a reference, alarms, DQM files.

Owns the DQM configuration and its default YAML, the comparison statistics, ``DQMMonitor`` and
the ``DQMService`` subscribed to the monitoring tap. May import the ``l1forge.online`` root
modules, ``l1forge.online.datapath`` (the wire format and the tap) and ``l1forge.sim``.
"""
