"""Every file the library writes goes through zootune.atomic (a crash leaves the old or the new
file, never a torn one). A static guard: direct writes outside a writer handed to atomic_write
are flagged."""

from __future__ import annotations

import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "zootune"
DIRECT = re.compile(r"\.write_text\(|\.write_bytes\(|\.savefig\(|np\.save[z]?\(|torch\.save\(|"
                    r"save_file\(|open\([^)]*['\"][wx]b?['\"]")


def test_no_direct_file_writes_in_the_library():
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.name == "atomic.py":
            continue
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            code = line.split("#", 1)[0]
            if not DIRECT.search(code) or "import" in code:
                continue
            # allowed inside a writer passed to atomic_write: a lambda on a temporary path, or a
            # nested function whose parameter is the temporary path
            context = "\n".join(lines[max(0, i - 12):i + 1])
            if "lambda tmp" in code or "lambda p:" in code or re.search(r"def \w+\(tmp[\w_]*: str\)", context):
                continue
            offenders.append(f"{path.relative_to(SRC)}:{i + 1}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
