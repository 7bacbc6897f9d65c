"""Whether code imports ``torch._dynamo`` (about 1.4 s of CPU at first use), in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys


def imports_dynamo(code: str) -> str:
    """``"True"`` or ``"False"``: whether ``torch._dynamo`` is imported after ``import sys, torch`` and
    ``code`` run in a new Python process (which must succeed)."""
    full = f"import sys, torch; {code}; print('torch._dynamo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", full], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()
