"""Offline stand-in for @rules_python//python:repositories.bzl: Bazel 4's built-in py rules need nothing set up."""

def py_repositories():
    pass
