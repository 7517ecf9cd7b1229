"""The teacher-removal guard, in child processes (an audit hook cannot be removed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from kernel_helpers import HANG_GUARD

CHILD = """
import sys
from pathlib import Path
from nexus_kernel.teachers.guard import TeacherAccessError, forbid_reads

teacher, elsewhere, attempt = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
forbid_reads([teacher])
assert elsewhere.read_text() == "fine"  # other files stay readable
try:
    if attempt == "open":
        open(teacher / "config.json").read()
    elif attempt == "link":
        (elsewhere.parent / "alias.json").read_text()
    elif attempt == "listdir":
        import os
        os.listdir(teacher)
    elif attempt == "transformers":
        from transformers import AutoConfig
        AutoConfig.from_pretrained(teacher)
except TeacherAccessError as exc:
    print(f"caught: {exc}")
    sys.exit(0)
except Exception as exc:  # transformers wraps errors: the guard's message must still be there
    print(f"wrapped: {type(exc).__name__}: {exc}")
    sys.exit(0 if "teacher removal" in str(exc) else 2)
print("not caught")
sys.exit(1)
"""


def _run(tmp_path: Path, attempt: str) -> subprocess.CompletedProcess[str]:
    teacher = tmp_path / "models" / "nexus-demo-math"
    teacher.mkdir(parents=True, exist_ok=True)
    (teacher / "config.json").write_text('{"model_type": "llama"}')
    elsewhere = tmp_path / "run" / "student.json"
    elsewhere.parent.mkdir(parents=True, exist_ok=True)
    elsewhere.write_text("fine")
    alias = elsewhere.parent / "alias.json"
    if not alias.exists():
        alias.symlink_to(teacher / "config.json")
    return subprocess.run([sys.executable, "-c", CHILD, str(teacher), str(elsewhere), attempt],
                          capture_output=True, text=True, timeout=HANG_GUARD, check=False)


def test_the_guard_catches_a_student_reading_a_teacher_file(tmp_path: Path) -> None:
    for attempt in ("open", "link", "listdir", "transformers"):
        result = _run(tmp_path, attempt)
        assert result.returncode == 0, (attempt, result.stdout, result.stderr)
        assert "nexus-demo-math" in result.stdout, (attempt, result.stdout)
