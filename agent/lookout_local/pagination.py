"""NextToken/MaxResults over an ordered list.

The token is opaque to clients: base64 of ``{"op": <operation>, "offset": n}``. Offsets are enough here
because lists are small and ordered deterministically (names, or newest first); an item created or deleted
between two pages can shift the next page by one, as with many AWS list calls. A token from another
operation or garbage is a ValidationException.
"""

from __future__ import annotations

import base64
import json

from agent.lookout_local.errors import ValidationException

DEFAULT_PAGE = 50


def page_window(params: dict, op: str, default: int = DEFAULT_PAGE) -> tuple[int, int]:
    """(offset, page size) from NextToken/MaxResults; a token from another operation is a ValidationException."""
    offset = 0
    token = params.get("NextToken")
    if token:
        try:
            doc = json.loads(base64.urlsafe_b64decode(token.encode()).decode())
            if doc.get("op") != op or not isinstance(doc.get("offset"), int) or doc["offset"] < 0:
                raise ValueError
            offset = doc["offset"]
        except (ValueError, UnicodeDecodeError, AttributeError):
            raise ValidationException(f"invalid NextToken for {op}") from None
    return offset, params.get("MaxResults") or default


def next_token(op: str, offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"op": op, "offset": offset}).encode()).decode()


def paginate(items: list, params: dict, op: str, default: int = DEFAULT_PAGE) -> tuple[list, str | None]:
    """(this page, the NextToken or None when it is the last page)."""
    offset, size = page_window(params, op, default)
    page = items[offset:offset + size]
    nxt = offset + size
    if nxt >= len(items):
        return page, None
    return page, next_token(op, nxt)
