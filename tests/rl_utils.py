"""Shared helpers of the RL tests: the smoke-run overrides and a run killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

#: a real ALE run of 200 agent steps that learns, checkpoints and evaluates quickly
SMOKE = ["run.steps=200", "agent.learning_starts=100", "agent.target_update=50", "run.eval_every=0",
         "run.eval_episodes=1", "env.max_episode_frames=2000", "run.log_every=50",
         "run.checkpoint_every=100", "run.tensorboard=false", "agent.replay_capacity=1000"]


def kill_mid_run(overrides: list[str], out: Path, timeout: float = 180.0) -> int:
    """Start ``zootune rl run der --out OUT`` in a subprocess, SIGKILL it as soon as its first
    checkpoint exists, and return that checkpoint's step."""
    cmd = [sys.executable, "-m", "zootune", "rl", "run", "der", "--out", str(out), "--quiet", *overrides]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"})
    latest = out / "checkpoints" / "latest.json"
    deadline = time.time() + timeout
    while not latest.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return int(json.loads(latest.read_text())["step"])
