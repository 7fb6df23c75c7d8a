"""The filesystem adapter: the tree of filesystem.md over the driver core.

Only :mod:`netfs.fs.ops` imports pyfuse3; everything else here (and this
package) imports without libfuse.
"""
