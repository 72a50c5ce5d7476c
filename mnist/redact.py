"""Secrets out of everything the project prints, logs or records: a password in a URI
(`postgresql://user:pw@host/db`) or in a query string (`?password=pw`) becomes `***`.
One function for messages, log records, MLflow params and tags and logged text files;
imports nothing heavy, so the entry points install it before torch or MLflow load."""

import logging
import re
from collections.abc import Mapping
from typing import Any

MASK = "***"
# scheme://user:password@host: the password is whatever follows the user's colon up to
# the last @ before the host (a password may itself hold an @ or a colon).
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s/:@]*:)[^\s/]*@")
_QUERY_SECRET = re.compile(
    r"(?P<head>[?&;](?:password|passwd|pwd|pass|secret|token|api_key|apikey|key)=)[^\s&;#]+",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """`text` with every password in a URI replaced by ***."""
    if "://" not in text and "=" not in text:
        return text
    text = _USERINFO.sub(rf"\g<head>{MASK}@", text)
    return _QUERY_SECRET.sub(rf"\g<head>{MASK}", text)


def redacted_values(values: Mapping[str, Any]) -> dict[str, str]:
    """MLflow params or tags as strings, with their secrets redacted."""
    return {key: redact(str(value)) for key, value in values.items()}


def redact_log_records() -> None:
    """Every log record from now on, of any logger and to any handler (console, a job's
    .log file), has its secrets redacted. A record factory, not a handler filter: Hydra
    replaces the handlers when it configures logging, the factory stays."""
    make_record = logging.getLogRecordFactory()
    if getattr(make_record, "redacts", False):
        return

    def redacting_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: logging reports it when it is emitted
            return record
        if (safe := redact(message)) != message:
            record.msg, record.args = safe, None
        return record

    redacting_record.redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(redacting_record)
