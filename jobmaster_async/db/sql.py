"""The SQL catalogue: ``.sql`` files from ``jobmaster_async/sql`` with the schema substituted."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cached_property
from importlib import resources

__all__ = ("Catalogue", "Migration", "channel_name", "quote_identifier")

_BLOCK = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
_MIGRATION = re.compile(r"^(\d{4})_\w+\.sql$")


def quote_identifier(name: str) -> str:
    """A PostgreSQL identifier, quoted (any text is safe)."""
    if not name or "\x00" in name:
        raise ValueError(f"invalid identifier {name!r}")
    return '"' + name.replace('"', '""') + '"'


def channel_name(schema: str) -> str:
    """The NOTIFY channel of a schema: short (<= 63 bytes), distinct per schema, plain ASCII."""
    return "jobmaster_" + hashlib.sha256(schema.encode()).hexdigest()[:32]


def _read(name: str) -> str:
    return resources.files("jobmaster_async").joinpath("sql", name).read_text(encoding="utf-8")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


class Catalogue:
    """Every SQL text of one schema."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        self.quoted_schema = quote_identifier(schema)
        self.channel = channel_name(schema)

    def render(self, text: str) -> str:
        # the channel is hex, so quoting it as a literal is safe
        return text.replace("{schema}", self.quoted_schema).replace("{channel}", f"'{self.channel}'")

    @cached_property
    def queries(self) -> dict[str, str]:
        text = _read("queries.sql")
        parts = _BLOCK.split(text)
        return {name: self.render(body).strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}

    def __getitem__(self, name: str) -> str:
        return self.queries[name]

    @cached_property
    def functions(self) -> str:
        return self.render(_read("functions.sql"))

    @cached_property
    def interface(self) -> str:
        """The SQL interface, as a text to copy from."""
        return self.render(_read("interface.sql")).strip()

    @cached_property
    def migrations(self) -> tuple[Migration, ...]:
        folder = resources.files("jobmaster_async").joinpath("sql", "migrations")
        found = []
        for entry in folder.iterdir():
            match = _MIGRATION.match(entry.name)
            if match:
                found.append(Migration(int(match.group(1)), entry.name, self.render(entry.read_text(encoding="utf-8"))))
        return tuple(sorted(found, key=lambda m: m.version))

    @property
    def latest_version(self) -> int:
        return self.migrations[-1].version
