"""A tiny migration runner: numbered SQL files in ``migrations/``, applied once, noted in schema_migrations.

It runs inside the load transaction after the advisory lock, so two loaders never migrate at once and a failed
load leaves no half-applied schema.
"""

from __future__ import annotations

from importlib import resources

from pg_load import sql


def migration_files() -> list[tuple[str, str]]:
    """(version, SQL) for every ``NNN_name.sql`` shipped with the package, in order."""
    folder = resources.files("pg_load") / "migrations"
    files = sorted(f.name for f in folder.iterdir() if f.name.endswith(".sql"))
    return [(name.removesuffix(".sql"), (folder / name).read_text(encoding="utf-8")) for name in files]


#: the migration that creates the tables: when it ran in this transaction, no other session can see them yet
CREATES_TABLES = "001_init"


def migrate(cur) -> list[str]:
    """Apply pending migrations with cursor ``cur``; returns the versions applied now."""
    cur.execute(sql.CREATE_MIGRATIONS)
    cur.execute(sql.SELECT_MIGRATIONS)
    done = {row[0] for row in cur.fetchall()}
    applied = []
    for version, text in migration_files():
        if version not in done:
            cur.execute(text)
            cur.execute(sql.INSERT_MIGRATION, (version,))
            applied.append(version)
    return applied
