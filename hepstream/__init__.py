"""hepstream: ROOT files to Kafka to online training on Ray to Ray Serve.

The core package holds what the three layers share: the configuration schema
(:mod:`hepstream.config`), the wire format (:mod:`hepstream.wire`), the
embedded stack (:mod:`hepstream.stack`) and the command line
(:mod:`hepstream.cli`). The layers themselves are :mod:`hepstream.streaming`,
:mod:`hepstream.models` and :mod:`hepstream.serve`.
"""

__version__ = "0.1.0"
