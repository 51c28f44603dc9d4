# -*- test-case-name: tests.protocols.test_xmldoc -*-
"""Why a message was refused or flagged: the one value type every check and every receipt shares."""

import attrs


@attrs.frozen
class Finding:
    """One reason a document was refused or flagged, in the shape receipts carry.

    :ivar code: a stable ``GW-*`` code (``GW-XML``, ``GW-SIG-INVALID``, ``GW-DUP``, …).
    :ivar message: one or two sentences telling the partner what is wrong and what to change.
    :ivar field: where, when known: an XPath-like location in the document, or a byte offset.
    """

    code: str
    message: str
    field: str | None = None
