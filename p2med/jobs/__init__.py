"""Thin entry points, one per job: read the config, call the components, report.

Each job module defines `JobSettings` (its typed settings) and `run(config)`, and keeps its
top-level imports light so that `p2med --help` stays fast.
"""
