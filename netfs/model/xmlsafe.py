"""Hardened XML parsing for everything netfs reads from users or disk.

One parser configuration for the whole model: no entity expansion, no DTD
loading, no network access, libxml2's normal (non-"huge") limits, and an
input size cap. A document type declaration is refused outright, so the
entity tricks (billion laughs, external entities) cannot even start. Deep
nesting is stopped by libxml2's own depth limit. Every problem becomes
``NetfsError(EINVAL, message)``.

Also the small text helpers the formatters share: libvirt's buffer escaping
for single-quoted attributes and element text.
"""

from __future__ import annotations

from lxml import etree

from netfs.errors import invalid

Element = etree._Element

__all__ = [
    "MAX_INPUT_BYTES",
    "Element",
    "attr",
    "escape",
    "parse_document",
    "root_name",
]

MAX_INPUT_BYTES = 1024 * 1024


class _NoResolver(etree.Resolver):
    """Refuses every external resource (DTDs, entities, XIncludes)."""

    def resolve(self, system_url, public_id, context):  # type: ignore[no-untyped-def]
        raise invalid("XML error: external resources are not allowed")


def _make_parser() -> etree.XMLParser:
    parser = etree.XMLParser(
        resolve_entities=False,
        load_dtd=False,
        dtd_validation=False,
        no_network=True,
        huge_tree=False,
        remove_blank_text=False,
        remove_comments=False,
        remove_pis=False,
        strip_cdata=True,
        recover=False,
        collect_ids=False,
    )
    parser.resolvers.add(_NoResolver())
    return parser


def _to_bytes(data: str | bytes) -> bytes:
    if isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
    elif isinstance(data, str):
        try:
            raw = data.encode("utf-8")
        except UnicodeEncodeError as e:
            raise invalid("XML error: input is not valid Unicode text") from e
    else:
        raise invalid("XML error: input must be text")
    if len(raw) > MAX_INPUT_BYTES:
        raise invalid(f"XML error: document too large ({len(raw)} bytes; the limit is 1 MiB)")
    return raw


def parse_document(data: str | bytes) -> Element:
    """Parse ``data`` and return its root element.

    Raises NetfsError(EINVAL) for oversized input, malformed XML, a DOCTYPE
    (and with it any entity declaration), or an entity reference.
    """
    raw = _to_bytes(data)
    if not raw.strip():
        raise invalid("XML error: document is empty")
    parser = _make_parser()
    try:
        root = etree.fromstring(raw, parser)
    except etree.XMLSyntaxError as e:
        msg = str(e.msg if getattr(e, "msg", None) else e).strip() or "malformed document"
        raise invalid(f"XML error: {msg}") from None
    except (ValueError, TypeError, MemoryError, RecursionError) as e:
        raise invalid(f"XML error: {e}") from None
    if root is None:
        raise invalid("missing root element")
    tree = root.getroottree()
    docinfo = tree.docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise invalid("XML error: a DOCTYPE declaration is not allowed")
    # with resolve_entities=False any reference to a (non-predefined)
    # entity stays in the tree as an entity node: refuse it
    for node in root.iter(etree.Entity):
        raise invalid(f"XML error: entity reference '{node.text}' is not allowed")
    return root


def root_name(data: str | bytes) -> str:
    """The local name of the document's root element."""
    return etree.QName(parse_document(data)).localname


def escape(value: str) -> str:
    """libvirt's virBufferEscapeString: < > & ' " become entities."""
    return (
        value.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("'", "&apos;")
        .replace('"', "&quot;")
    )


def attr(name: str, value: str | None) -> str:
    """`` name='value'`` with libvirt's escaping; '' when value is None."""
    if value is None:
        return ""
    return f" {name}='{escape(value)}'"
