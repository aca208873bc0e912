"""Offline stand-in for @rules_python//python:defs.bzl: Bazel's built-in Python rules."""

def py_binary(**attrs):
    native.py_binary(**attrs)

def py_library(**attrs):
    native.py_library(**attrs)

def py_test(**attrs):
    native.py_test(**attrs)
