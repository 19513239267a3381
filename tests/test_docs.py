"""Documentation that is generated from code stays identical to it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_protocol_field_tables_match_the_records() -> None:
    spec = importlib.util.spec_from_file_location(
        "protocol_tables", ROOT / "scripts" / "protocol_tables.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    doc = (ROOT / "docs" / "protocol.md").read_text()
    for marker, text in (("fields", module.tables()), ("rpcs", module.rpc_table())):
        between = doc.split(f"<!-- {marker}:begin -->\n", 1)[1].split(f"<!-- {marker}:end -->")[0]
        assert between.strip() == text.strip(), (
            f"docs/protocol.md's {marker} table is stale: regenerate it with "
            "scripts/protocol_tables.py"
        )
