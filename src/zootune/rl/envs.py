"""Atari environments with the standard preprocessing, and their state for checkpoints.

``make_env`` builds ``ALE/<Game>-v5`` (ale-py; its ROMs ship in the wheel, nothing is
downloaded) with ``frameskip=1`` at the ALE level and gymnasium's wrappers on top:

* ``AtariPreprocessing``: action repeat ``frame_skip`` (4) with a max-pool over the last two
  frames, up to ``noop_max`` (30) random no-ops after each reset, 84x84 grayscale, uint8;
  ``terminal_on_life_loss=False`` — a lost life is reported to the agent loop through
  ``info["lives"]`` and used only to cut the n-step return (the episode goes on);
* ``FrameStackObservation``: the last ``frame_stack`` (4) frames, padded at an episode's start
  with its first frame (``padding_type="reset"``), which the compact replay reproduces.

Settings named explicitly (``EnvConfig``): the ALE version (``v5``: ale-py >= 0.9),
``repeat_action_probability`` (0.0 by default, the Atari-100k / DER protocol; ALE v5's own
default is 0.25 sticky actions, Machado et al. 2018), ``full_action_space`` (False: each game's
minimal action set, as DER) and ``max_num_frames_per_episode`` (108,000 frames = 27,000 agent
steps, for training and evaluation).

:func:`env_state` / :func:`set_env_state` capture and restore everything a step depends on —
the emulator (``ALEInterface.cloneState(include_rng=True)``), the env's NumPy generator (no-op
starts), the wrappers' frame buffers, lives and frame stack — so a resumed run continues with
the very same observations.
"""

from __future__ import annotations

import json
import pickle
from typing import Any

import numpy as np
import torch

from zootune.rl.network import RLDependencyError


def _gym():
    try:
        import ale_py
        import cv2  # noqa: F401  (AtariPreprocessing resizes with OpenCV)
        import gymnasium as gym
        from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation
    except ImportError as exc:
        raise RLDependencyError(f"Atari environments need gymnasium, ale-py and "
                                f"opencv-python-headless ({exc}): pip install 'zootune[rl]'") from None
    gym.register_envs(ale_py)
    return gym, AtariPreprocessing, FrameStackObservation


def env_id(game: str, version: str = "v5") -> str:
    """``ALE/<Game>-<version>`` for a game name (``Alien``, ``alien``, ``ALE/Alien-v5``)."""
    if game.startswith("ALE/"):
        return game
    name = game[:1].upper() + game[1:]
    return f"ALE/{name}-{version}"


def make_env(cfg: Any, seed: int | None = None):
    """An Atari env for :class:`zootune.rl.config.EnvConfig` ``cfg``; reset it with ``seed``."""
    gym, AtariPreprocessing, FrameStackObservation = _gym()
    from zootune.config import ConfigError

    eid = env_id(cfg.game, cfg.ale_version)
    try:
        env = gym.make(eid, frameskip=1, repeat_action_probability=cfg.repeat_action_probability,
                       full_action_space=cfg.full_action_space,
                       max_num_frames_per_episode=cfg.max_episode_frames)
    except gym.error.Error as exc:
        raise ConfigError(f"env.game {cfg.game!r}: {eid} is not an ALE environment ({exc})") from None
    env = AtariPreprocessing(env, noop_max=cfg.noop_max, frame_skip=cfg.frame_skip,
                             screen_size=cfg.screen_size, terminal_on_life_loss=False,
                             grayscale_obs=True, scale_obs=False)
    env = FrameStackObservation(env, cfg.frame_stack, padding_type="reset")
    return env


def _wrappers(env) -> tuple[Any, Any]:
    from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

    pre = stack = None
    e = env
    while e is not None:
        if isinstance(e, FrameStackObservation):
            stack = e
        if isinstance(e, AtariPreprocessing):
            pre = e
        e = getattr(e, "env", None)
    return pre, stack


def env_state(env) -> dict[str, Any]:
    """The env's full step state as tensors and strings (checkpoint extras)."""
    pre, stack = _wrappers(env)
    ale = env.unwrapped.ale
    blob = pickle.dumps(ale.cloneState(include_rng=True))
    return {
        "ale": torch.frombuffer(bytearray(blob), dtype=torch.uint8).clone(),
        "np_random": json.dumps(env.unwrapped.np_random.bit_generator.state),
        "obs_buffer": torch.from_numpy(np.stack(pre.obs_buffer).copy()),
        "lives": int(pre.lives),
        "game_over": bool(pre.game_over),
        "frames": torch.from_numpy(np.stack(list(stack.obs_queue)).copy()),
        "padding": torch.from_numpy(np.asarray(stack.padding_value).copy()),
    }


def set_env_state(env, st: dict[str, Any]) -> np.ndarray:
    """Restore :func:`env_state` into a freshly made env; returns the current observation."""
    pre, stack = _wrappers(env)
    env.reset(seed=0)  # initialise every wrapper, then overwrite their state
    ale = env.unwrapped.ale
    ale.restoreState(pickle.loads(bytes(st["ale"].numpy().tobytes())))
    env.unwrapped.np_random.bit_generator.state = json.loads(st["np_random"])
    buf = st["obs_buffer"].numpy()
    for i in range(len(pre.obs_buffer)):
        pre.obs_buffer[i][...] = buf[i]
    pre.lives, pre.game_over = int(st["lives"]), bool(st["game_over"])
    frames = st["frames"].numpy()
    stack.obs_queue.clear()
    for f in frames:
        stack.obs_queue.append(f.copy())
    stack.padding_value = st["padding"].numpy().copy()
    return np.stack(list(stack.obs_queue))
