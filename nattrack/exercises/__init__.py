"""The guided labs under labs/: manifests, plugging a student's pieces into the engine,
and the test API.

The format every lab follows is docs/labs-format.md.
"""
