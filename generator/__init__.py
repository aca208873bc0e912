"""scaffold: turn a PyTorch model into a complete, verified C++ deployment project."""

__version__ = "0.1.0"
