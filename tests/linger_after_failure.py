"""Run run_pretrain.py; if this rank is the one APOLLO_TEST_FAIL_AT fails, stay alive afterwards.

The process keeps its connections to the other ranks open, as a failed rank on another node whose
death NCCL does not notice would look to them: without the failure guard, their next collective would
wait for the process group's timeout. Writes its PID to OUTPUT_DIR/lingering.rank_N once it has reported
(torchrun starts each rank in a session of its own: the test ends it by that PID).
"""
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import run_pretrain  # noqa: E402

code = run_pretrain.cli(sys.argv[1:])
rank = os.environ.get("RANK", "0")
if code != 0 and os.environ.get("APOLLO_TEST_FAIL_AT", "").split(":")[0] == rank:
    sys.stderr.flush()
    (Path(sys.argv[sys.argv.index("--output_dir") + 1]) / f"lingering.rank_{rank}").write_text(str(os.getpid()))
    time.sleep(3600)
sys.exit(code)
