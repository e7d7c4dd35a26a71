"""Uplift experiments: which arm a member is in, what happened afterwards, and the report.

Pure logic: ``definition`` (what an experiment is, validated once), ``assignment`` (salted
hash), ``stats`` (intervals, uplift metrics), ``report`` (the one computation behind every
surface), ``render`` (HTML with inline SVG, PNG). I/O: ``registry`` (in-memory cache refreshed in
the background for the request path) and ``service`` (event store reads and writes).
"""
