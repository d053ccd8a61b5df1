"""kdbench: a plugin-based benchmark harness for knowledge distillation."""
from kdbench.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "__version__"]
