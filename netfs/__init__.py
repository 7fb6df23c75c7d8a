"""netfs: virtual networks as a filesystem, with libvirt's network semantics."""

__version__ = "0.1.0"
