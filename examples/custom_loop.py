"""A training loop of one's own, built from zootune's training parts (no Dataset, no `fit`).

The shape of an RL agent's loop: the model *acts* (extra forwards that must not feed the gate
statistics), then learns from what it collected; it checkpoints atomically and resumes exactly.
Here the "environment" is a toy regression stream so that the example runs in seconds:

    python examples/custom_loop.py runs/own_loop --steps 60     # Ctrl-C, then run again: resumes
"""

from __future__ import annotations

import argparse

import torch

import zootune
from zootune.models import small_cnn
from zootune.train import (
    InterruptHandler,
    OptimizerStep,
    RunLogger,
    TrainState,
    gate_tracking,
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="run folder (checkpoints/, metrics.jsonl)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--checkpoint-every", type=int, default=10)
    args = p.parse_args(argv)

    torch.manual_seed(0)
    zoo = []
    for seed in range(3):  # a zoo of three small CNNs (random here; pretrained in real use)
        torch.manual_seed(seed)
        zoo.append(small_cnn(num_classes=1, widths=[4, 8], norm="group"))
    torch.manual_seed(0)
    net = zootune.zoo_tune(zoo, lite=True)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    state = TrainState(model=net, optimizer=opt, extras={"env_steps": 0})
    ckpts = f"{args.out}/checkpoints"
    if (latest := TrainState.latest(ckpts)) is not None:
        state.load(latest)  # weights, optimizer, RNG, step, extras
        print(f"resumed at step {state.step}")
    else:
        torch.manual_seed(1)  # the stream's randomness (restored by state.load on resume)
    step_fn = OptimizerStep(opt, grad_clip=10.0)
    logger = RunLogger(args.out, tensorboard=False, resume_step=state.step or None)
    with InterruptHandler() as stop:
        while state.step < args.steps and not stop.requested:
            obs = torch.randn(8, 1, 8, 8)
            net.train()
            with torch.no_grad(), gate_tracking(net, False):  # acting: no gate statistics
                _ = net(obs)
            target = obs.mean(dim=(1, 2, 3)).unsqueeze(1)
            loss = torch.nn.functional.mse_loss(net(obs), target)  # a training forward
            step_fn(loss)
            state.step += 1
            state.extras["env_steps"] += len(obs)
            if state.step % args.checkpoint_every == 0 or stop.requested:
                step_fn.check()  # one host sync, only here
                state.save(ckpts, keep=2)
                logger.log(state.step, "train", {"loss": float(loss.detach())})
    logger.close()
    if state.step % args.checkpoint_every:
        state.save(ckpts, keep=2)
    print(f"step {state.step}, env steps {state.extras['env_steps']}, "
          f"gates of the first layer {net.gate_values()[net.layer_names[0]].tolist()}")
    return 130 if stop.requested else 0


if __name__ == "__main__":
    raise SystemExit(main())
