"""``hepstream bench``: each layer measured against its own baseline, in one run; beside the layers, not in them.

One module per stage: :mod:`.produce` (ROOT files to Kafka), :mod:`.train`
(Kafka to a trained, served version), :mod:`.core` (the trainer core on CPU
and CUDA, no broker or Ray), :mod:`.serve` (Ray Serve against bare
uvicorn) and :mod:`.freshness` (a file landing in a followed folder until a
version that learned it answers HTTP, through ``hepstream run``), each exposing ``add_arguments(parser)`` and ``run(args) -> dict``.
What they share is in :mod:`.common` (timing, child processes, readiness),
:mod:`.workload` (the training stages' events) and :mod:`.http_load` (the
serving stage's client). The library never imports this package; measured
figures live in docs/, with their dates.
"""
