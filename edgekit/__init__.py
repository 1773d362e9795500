"""edgekit: take trained transformer encoders to edge devices.

The pipeline is a chain of plain steps, one module each:
``load`` -> ``export`` -> ``compile`` -> ``profile`` / ``eval``.
Heavy dependencies (torch, transformers, openvino) are imported inside the steps that
need them, so importing edgekit (and ``edgekit --help``) stays fast.
"""

__version__ = "0.1.0"
