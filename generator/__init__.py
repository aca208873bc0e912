"""scaffold: turn a PyTorch model into a complete, verified C++ deployment project."""

from importlib.metadata import PackageNotFoundError, version

try:  # written once, in pyproject.toml; the installed metadata carries it
    __version__ = version("scaffold")
except PackageNotFoundError:  # a source tree on PYTHONPATH, not installed
    __version__ = "0+unknown"
