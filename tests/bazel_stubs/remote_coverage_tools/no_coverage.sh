#!/bin/sh
echo "coverage tools are not available offline (this is a test stub for @remote_coverage_tools)" >&2
exit 1
