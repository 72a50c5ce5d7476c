"""Secrets never reach a config, a file or a message: a password in a URI given on the command
line or in $MLFLOW_TRACKING_URI moves to the environment variable its client reads, and log
records are redacted. Imports nothing heavy, so the entry points install it first."""

import logging
import os
import re
import urllib.parse
from typing import Any

from mnist.errors import ConfigError

MASK = "***"
# A server URI's password may hold an @ (the host follows the last one), a database URI's
# a / (SQLAlchemy reads up to the first @).
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s/:@]*:)[^\s@]*(?:@[^\s/@]*)*@")
_QUERY_SECRET = re.compile(
    r"(?P<head>[?&;](?:password|passwd|pwd|pass|secret|token|api_key|apikey|key)=)[^\s&;#]+",
    re.IGNORECASE,
)
# MLflow reads a tracking server's credentials from these (a sweep's and a study's worker
# processes inherit them); libpq, under MLflow's and Optuna's SQLAlchemy stores, PGPASSWORD.
_SERVER_CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
_moved: dict[str, str] = {}  # the values this process moved to the environment


def redact(text: str) -> str:
    """`text` with every password in a URI replaced by ***."""
    if "://" not in text and "=" not in text:
        return text
    text = _USERINFO.sub(rf"\g<head>{MASK}@", text)
    return _QUERY_SECRET.sub(rf"\g<head>{MASK}", text)


def without_credentials(uri: str, source: str) -> str:
    """`uri` with its credentials moved to the environment variables its client reads;
    ConfigError (naming `source`, never the secret) for one no client reads from there."""
    if redact(uri) == uri:
        return uri
    scheme = uri.partition("://")[0].lower()
    if scheme in ("http", "https"):
        return _server_credentials_to_environment(uri, source)
    if scheme.partition("+")[0] in ("postgresql", "postgres"):
        return _postgres_password_to_environment(uri, source)
    raise ConfigError(
        f"{source}={redact(uri)}: a password in a {scheme} URI would be stored with the run's "
        "config; leave it out of the URI and give it to the database driver another way "
        "(its option file or environment)"
    )


def _server_credentials_to_environment(uri: str, source: str) -> str:
    parts = urllib.parse.urlsplit(uri)
    if urllib.parse.parse_qs(parts.query, keep_blank_values=True).keys() & _secret_keys(uri):
        raise ConfigError(
            f"{source}={redact(uri)}: a token in the URI's query would be stored with the "
            f"run's config; set {' and '.join(_SERVER_CREDENTIALS)} (or MLFLOW_TRACKING_TOKEN) "
            "instead"
        )
    _set_once(_SERVER_CREDENTIALS[0], urllib.parse.unquote(parts.username or ""), source)
    _set_once(_SERVER_CREDENTIALS[1], urllib.parse.unquote(parts.password or ""), source)
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def _postgres_password_to_environment(uri: str, source: str) -> str:
    from sqlalchemy.engine import make_url  # MLflow's and Optuna's stores: it parses their URLs

    url = make_url(uri)
    secrets = _secret_keys(uri) & set(url.query)
    passwords = [url.password, *(url.query[key] for key in secrets)]
    (password, *others) = [p for p in passwords if p is not None] or [""]
    if any(other != password for other in others):
        raise ConfigError(f"{source}={redact(uri)}: holds two different passwords")
    _set_once("PGPASSWORD", str(password), source)
    safe = url._replace(password=None).difference_update_query(secrets)
    return safe.render_as_string(hide_password=False)


def _secret_keys(uri: str) -> set[str]:
    return {m.group("head")[1:-1] for m in _QUERY_SECRET.finditer(uri)}


def _set_once(variable: str, value: str, source: str) -> None:
    """A client reads one value of each variable, so a second, different one is refused."""
    if _moved.setdefault(variable, value) != value:
        raise ConfigError(
            f"{source}: its credentials differ from those of another URI of this command, "
            f"and the client reads only one ${variable}"
        )
    os.environ[variable] = value


def overrides_without_credentials(argv: list[str]) -> list[str]:
    """Command-line overrides with every URI's credentials moved to the environment: Hydra
    records the overrides in .hydra/, its error messages and the config runs store."""
    safe = []
    for arg in argv:
        key, equals, value = arg.partition("=")
        safe.append(f"{key}={without_credentials(value, key.lstrip('+~'))}" if equals else arg)
    return safe


def redact_log_records() -> None:
    """Every log record from now on has its secrets redacted. A record factory, not a handler
    filter: Hydra replaces the handlers when it configures logging, the factory stays."""
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
