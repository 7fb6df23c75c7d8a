"""The pure model: network XML, port XML and virtualport profiles.

No I/O, no pyroute2, no pyfuse3. Parse, validate, format and merge, with
libvirt's rules and messages. Errors are :class:`netfs.errors.NetfsError`.
"""
