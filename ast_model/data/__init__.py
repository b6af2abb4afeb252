"""Data: degradation models, dataset readers, the embedded default, WebDataset shards and loaders.

Modules (import what you need; nothing here is imported eagerly, so the degradation models work
without webdataset installed):

* ``degradations``: rain streaks, raindrops and haze (seeded, parameters returned as dicts).
* ``embedded``: offline pairs for the three tasks from photos that installed packages ship.
* ``sources``: readers of SPAD, AGAN-Data, Dense-Haze and generic paired folders.
* ``manifest``, ``build``: the bodies of the ``prepare`` and ``shard`` stages.
* ``shards``: shard writing, ``index.json`` and verification (``verify_shards``).
* ``loaders``: ``make_train_loader`` and ``make_eval_loader``; ``transforms``: paired crop and flips.
* ``schedule``: ``PatchPhase`` and ``phase_at`` (progressive patch sizes).
* ``config``: the typed ``data``, ``prepare`` and ``shard`` params sections.
* ``bench``: ``python -m ast_model.data.loader_bench``.
"""
