"""l1forge.online: the streaming trigger daemon, storage, monitoring and continual learning.

Split by concern into subpackages, each importing only those listed before it:

- the root modules ``config`` (run YAML -> ``RunConfig``), ``validation`` (the number checks of
  the YAML loaders) and ``security`` (CURVE keys, loopback-only binds): used by every concern;
- ``datapath``: wire format, sources, broker, workers, backends, menu, collector, storage, the
  monitoring-tap subscriber and the pipeline of one run;
- ``web``: Prometheus metrics and the HTTP endpoint with the dashboard;
- ``dqm``: data-quality monitoring on the monitoring tap;
- ``learning``: drift detection, the continual learner and the model registry;
- ``control``: run control, the control socket, the daemon and the ``l1forge online`` CLI.
"""
