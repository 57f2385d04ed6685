"""The foundation every stage may import; it imports nothing of the project.

- :mod:`harness.core.registry`: ``Registry[T]``, the one shape of every plug-in axis.
- :mod:`harness.core.artifacts`: content keys, job folders and their done-markers.
- :mod:`harness.core.atomic`: writes that leave a whole file (or folder) or none.
- :mod:`harness.core.storage`: a local path or an object-store URI as a :mod:`pyarrow.fs` filesystem.
- :mod:`harness.core.layout`: names of files and splits that writers and readers share, and the data dir.
- :mod:`harness.core.jobs`: the typed job configs the planner writes and the executors and estimates read.
- :mod:`harness.core.tars`: the one tar reader (webdataset's iterator, grouped into samples, truncation checked).

Stages (``curation``, ``pretrain``, ``downstream``, ``results``) import only this sub-package from
``harness``; the layer contracts in ``pyproject.toml`` (``lint-imports``) check it.
"""
