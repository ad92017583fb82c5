"""bench/gpu_check.py's smoke version on the CPU: the GPU check is run rarely (only where a GPU is lent), so its
code paths through the pool are kept working here: every engine timed, the pool's memory figures read, the
simulated out-of-memory shrinking the budget and recovered."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_cpu_smoke_run_measures_every_engine_and_recovers_from_out_of_memory(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    # From another directory, as on a machine where only the repository was copied: the script finds it itself.
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu", "--texts", "8", "--out", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["mode"] == "embedding.pool.EmbeddingPool"
    assert "failed" not in result and "aborted" not in result
    assert [row["engine"] for row in result["throughput"]] == [
        "encode float32 (batch 32)",
        "encode bfloat16 (batch 32)",
        "pool float32",
        "pool bfloat16",
        "pool float32, 2 workers",
    ]
    assert all(row["tokens_per_s"] > 0 for row in result["throughput"])
    assert all(row["budget_ceiling_tokens"] == 2048 and row["memory_model"] for row in result["vram"])
    oom = result["oom"]
    assert oom["recovered"] and oom["ooms"] >= 1 and oom["budget_after_tokens"] < oom["budget_before_tokens"]
    assert oom["events"][0].startswith("out of memory on cpu with")
    assert oom["min_centred_cosine"] > 0.99
    assert result["two_workers"]["two_over_one"] > 0
