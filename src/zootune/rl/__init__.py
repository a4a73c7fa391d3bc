"""Zoo-Tuning of Atari agents with Data-Efficient Rainbow (paper §4.1): ``zootune rl``.

An agent loop built from the trainer's public parts (:class:`zootune.train.TrainState`,
:class:`~zootune.train.OptimizerStep`, :class:`~zootune.train.InterruptHandler`,
:class:`~zootune.train.RunLogger`, :func:`~zootune.train.gate_tracking`); see ``docs/rl.md``.

Python API::

    from zootune.rl import load_rl_config, train_agent, load_agent, evaluate_agent
    cfg = load_rl_config("der", ["env.game=Alien", "method.name=zoo_tuning",
                                 "method.sources=[src/Seaquest, src/Riverraid]"])
    res = train_agent(cfg, "runs/rl/alien_zt")      # resumes from its checkpoints if any
    res.final_return; res.info["gates"]
    net = load_agent("runs/rl/alien_zt")            # the saved agent (zootune model format)

Parts: :mod:`.config` (RLConfig), :mod:`.network` (DERNetwork), :mod:`.c51` (projection and
loss), :mod:`.replay` (compact prioritized replay with n-step returns), :mod:`.envs` (Atari
preprocessing, env state), :mod:`.agent` (methods: scratch, finetune, zoo_tuning,
zoo_tuning_lite, knowledge_flow; model files), :mod:`.knowledge_flow` (Knowledge Flow's online
network, sharing the classification method's mixing code), :mod:`.loop` (train_agent,
evaluate_agent), :mod:`.grid`.
"""

from zootune.rl.agent import SourceError, build_online, load_agent, load_source
from zootune.rl.c51 import c51_loss, project, support
from zootune.rl.config import RL_METHODS, RLConfig, build_rl_config, load_rl_config
from zootune.rl.loop import AgentResult, evaluate_agent, train_agent
from zootune.rl.network import DERNetwork, RLDependencyError
from zootune.rl.replay import CompactReplay, ReplayError

__all__ = [
           "RL_METHODS",
           "AgentResult",
           "CompactReplay",
           "DERNetwork",
           "RLConfig",
           "RLDependencyError",
           "ReplayError",
           "SourceError",
           "build_online",
           "build_rl_config",
           "c51_loss",
           "evaluate_agent",
           "load_agent",
           "load_rl_config",
           "load_source",
           "project",
           "support",
           "train_agent",
]
