"""Continual learning: drift tests on the zero-bias stream, the learner, the model registry.

Owns ``drift``, ``learner`` (adaptation on drift), ``feed`` (the learner's tap subscriber) and
``registry`` (versions with provenance).
Training itself lives in ``l1forge.models`` (imported lazily, TensorFlow only when a model is
fine-tuned). May import the ``l1forge.online`` root modules, ``l1forge.online.datapath`` (the
wire format, the menu and the tap) and ``l1forge.models``.
"""
