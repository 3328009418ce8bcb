"""edge-evolver: the device side. Measures ONNX models on the board they will run on.

This package must run on Python 3.6 (JetPack 4.6) to 3.12 and never imports torch.
"""

__version__ = "0.2.0"
