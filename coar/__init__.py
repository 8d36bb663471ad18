"""coar: component attribution via regression (COAR) and COAR-Edit.

Shah, Ilyas and Madry, "Decomposing and Editing Predictions by Modeling Model
Computation" (ICML 2024). The package is the library every workflow rule calls.
"""

__version__ = "0.1.0"
