"""The SQL catalogue: ``.sql`` files from ``jobmaster_async/sql`` with the schema and the fragments
substituted (``sql/README.md``)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache, cached_property
from importlib import resources

__all__ = (
    "CLAIM_SETTINGS",
    "FUNCTIONS",
    "Catalogue",
    "Migration",
    "channel_name",
    "check_schema_name",
    "quote_identifier",
)

_BLOCK = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
_MIGRATION = re.compile(r"^(\d{4})_\w+\.sql$")
_FRAGMENT = re.compile(r"^-- fragment: (\w+)\s*$", re.MULTILINE)
_PLACEHOLDER = re.compile(r"\{(?:schema|channel|search_path|entry_point|claim_settings|fragment:\w+)\}|\$\$")

#: The planner settings of every claim: SET clauses of claim_jobs() and promote_due_jobs()
#: (placeholder ``{claim_settings}``), and the session settings of the claimer's connection, which
#: runs claim_jobs_fast (``Catalogue.claim_session_settings``); this is their one source. A queue
#: table's statistics are always stale: with sorts allowed, a plan that reads every waiting job and
#: sorts them looks cheaper than walking the claim index in order, and is far slower. Before
#: PostgreSQL 18 a disabled plan node is given a huge cost, which would make JIT compile every
#: claim: hence jit off. Bitmap scans are off because they never mark the index entries of
#: finished jobs dead: until vacuum, every count of a task's running jobs would visit the table for
#: each finished job of the task (migration 0006). Incremental sorts are off with sorts: a probe of
#: the suspects must go along jobs_suspects_idx, in an order no other index gives in full
#: (migration 0016).
CLAIM_SETTINGS = (
    ("enable_sort", "off"),
    ("enable_incremental_sort", "off"),
    ("jit", "off"),
    ("enable_bitmapscan", "off"),
)

#: The files of ``sql/functions/``, in the order deploy() runs them: a SQL-language function's body
#: is checked when it is created, so what it calls comes first.
FUNCTIONS = (
    "validation",
    "dependencies",
    "insert",
    "claim",
    "outcomes",
    "workers",
    "manage",
    "retention",
    "schedules",
    "triggers",
    "views_grants",
)

#: PostgreSQL cuts identifiers longer than this (NAMEDATALEN - 1), in bytes.
MAX_IDENTIFIER_BYTES = 63


def quote_identifier(name: str) -> str:
    """A PostgreSQL identifier, quoted (any text is safe)."""
    if not name or "\x00" in name:
        raise ValueError(f"invalid identifier {name!r}")
    return '"' + name.replace('"', '""') + '"'


def check_schema_name(schema: str) -> str:
    """The schema name, if PostgreSQL keeps it as it is: 1 to 63 bytes, no NUL."""
    if not isinstance(schema, str) or not schema or "\x00" in schema:
        raise ValueError(f"a schema name is 1 to {MAX_IDENTIFIER_BYTES} bytes of text without NUL, got {schema!r}")
    if len(schema.encode()) > MAX_IDENTIFIER_BYTES:
        raise ValueError(
            f"schema name {schema!r} is {len(schema.encode())} bytes long; PostgreSQL keeps at most "
            f"{MAX_IDENTIFIER_BYTES}"
        )
    return schema


def _dollar_tag(schema: str) -> str:
    """A dollar-quote tag that does not occur in the quoted schema name, so a function body
    ($tag$ ... $tag$) mentioning the schema cannot be closed by it."""
    n = 0
    while (tag := f"$jm{n or ''}$") in schema:
        n += 1
    return tag


def channel_name(schema: str) -> str:
    """The NOTIFY channel of a schema: short (<= 63 bytes), distinct per schema, plain ASCII."""
    return "jobmaster_" + hashlib.sha256(schema.encode()).hexdigest()[:32]


def _advisory_key(text: str) -> int:
    """A bigint advisory-lock key for ``text`` (pg_advisory_xact_lock's one-key form)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big", signed=True)


@cache
def _read(name: str) -> str:
    """A file of ``jobmaster_async/sql``, named by its path there (``functions/claim.sql``)."""
    return resources.files("jobmaster_async").joinpath("sql", *name.split("/")).read_text(encoding="utf-8")


@cache
def _fragments() -> tuple[tuple[str, str], ...]:
    """The blocks of ``sql/fragments.sql`` in file order: (name, text without comment lines)."""
    parts = _FRAGMENT.split(_read("fragments.sql"))
    found = []
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [line.rstrip() for line in body.splitlines() if line.strip() and not line.lstrip().startswith("--")]
        if not lines or "--" in lines[-1]:
            raise ValueError(f"sql/fragments.sql: fragment {name} is empty or ends in a comment")
        found.append((name, "\n".join(lines)))
    return tuple(found)


def _frozen(name: str, text: str) -> str:
    """A migration's or schema.sql's text: plain SQL, using no fragment (a fragment may change; what
    a migration did may not)."""
    if "{fragment:" in text:
        raise ValueError(f"{name} uses a fragment; migrations and schema.sql are written out in full")
    return text


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


class Catalogue:
    """Every SQL text of one schema."""

    def __init__(self, schema: str) -> None:
        self.schema = check_schema_name(schema)
        self.quoted_schema = quote_identifier(schema)
        self.channel = channel_name(schema)
        # Names resolve in pg_catalog first, then this schema, never elsewhere; and no statement
        # of the library is JIT-compiled: they are short, but a recursive CTE's estimate (the
        # dependency plan) passes jit_above_cost, and on a server built with LLVM (Debian's, for
        # one) each call then spent ~100 ms compiling (benchmarks/README.md "Soak").
        pinned = f"SET search_path = pg_catalog, {self.quoted_schema}, pg_temp SET jit = off"
        self._values = {
            "{schema}": self.quoted_schema,
            # the channel is hex, so quoting it as a literal is safe
            "{channel}": f"'{self.channel}'",
            # trigger functions: the pinned settings above
            "{search_path}": pinned,
            # the SQL entry points: the same
            "{entry_point}": pinned,
            "{claim_settings}": " ".join(f"SET {name} = {value}" for name, value in CLAIM_SETTINGS),
            "$$": _dollar_tag(schema),
        }
        # each fragment rendered once, with the fragments above it in place
        for name, body in _fragments():
            self._values[f"{{fragment:{name}}}"] = self.render(body)

    def render(self, text: str) -> str:
        """The text with its placeholders filled in, in one pass (a schema name holding
        "{channel}" stays as it is), and each $$ dollar quote given a tag the name cannot close.
        {search_path} and {entry_point} are the SET clauses that pin what a function resolves;
        {fragment:name} is that block of ``sql/fragments.sql``."""
        return _PLACEHOLDER.sub(self._value, text)

    def _value(self, match: re.Match[str]) -> str:
        try:
            return self._values[match.group(0)]
        except KeyError:
            raise ValueError(f"unknown placeholder {match.group(0)} (a fragment defined further down?)") from None

    @cached_property
    def deploy_lock(self) -> int:
        """The advisory-lock key that serialises the deploys of this schema."""
        return _advisory_key(f"jobmaster_async:{self.schema}")

    @cached_property
    def prune_lock(self) -> int:
        """The advisory-lock key that lets one worker at a time prune this schema."""
        return _advisory_key(f"jobmaster_async:prune:{self.schema}")

    @cached_property
    def claim_session_settings(self) -> str:
        """The claim's planner settings (CLAIM_SETTINGS, their one source) as the statements that make
        them the session settings of the connection that runs claim_jobs_fast."""
        return "; ".join(f"SET {name} = {value}" for name, value in CLAIM_SETTINGS)

    @cached_property
    def queries(self) -> dict[str, str]:
        return self._blocks("queries.sql")

    @cached_property
    def dashboard(self) -> dict[str, str]:
        """The dashboard's reads (``sql/dashboard.sql``, run by db/insights.py)."""
        return self._blocks("dashboard.sql")

    def _blocks(self, name: str) -> dict[str, str]:
        """The named blocks (``-- name: x``) of a file of ``sql/``, rendered."""
        parts = _BLOCK.split(_read(name))
        return {block: self.render(body).strip() for block, body in zip(parts[1::2], parts[2::2], strict=True)}

    def __getitem__(self, name: str) -> str:
        return self.queries[name]

    @cached_property
    def functions(self) -> str:
        """Every function, trigger and view: the files of ``sql/functions/`` in FUNCTIONS order."""
        return "\n\n".join(self.render(_read(f"functions/{name}.sql")) for name in FUNCTIONS)

    @cached_property
    def schema_sql(self) -> str:
        """``sql/schema.sql``: the tables, types, indexes and constraints the migrations produce,
        which deploy() applies to a new schema instead of running every migration."""
        return self.render(_frozen("schema.sql", _read("schema.sql")))

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
                text = _frozen(entry.name, entry.read_text(encoding="utf-8"))
                found.append(Migration(int(match.group(1)), entry.name, self.render(text)))
        return tuple(sorted(found, key=lambda m: m.version))

    @property
    def latest_version(self) -> int:
        return self.migrations[-1].version
