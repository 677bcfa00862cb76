"""l1forge: Level-1 triggering and monitoring with quantized networks, firmware and co-design.

Importing this package is cheap: no TensorFlow, torch or simulator is loaded until used.
"""

__version__ = "0.1.0"
