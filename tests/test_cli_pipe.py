"""The CLI when its reader goes away: `sasan summary | head` ends quietly (status 141)."""

import json
import subprocess
import sys


def test_closed_output_pipe_ends_quietly(tmp_path):
    cell = {"dice": 0.5, "assd_vox": 2.0, "assd_mm": 3.0}
    # far more than a pipe buffer (64 KiB) of table, so the print meets the closed pipe
    results = {f"method_{i:04d}": {"per_structure": {"MYO": cell}, "mean": cell} for i in range(3000)}
    metrics = tmp_path / "evaluation.json"
    metrics.write_text(json.dumps(results))
    proc = subprocess.Popen([sys.executable, "-m", "sasan", "summary", "--metrics", str(metrics)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().split()[0] == b"method"
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr
