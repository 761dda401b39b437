"""`om2p train` and `om2p eval` (heavy imports stay inside the handlers)."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train",
        help="train a policy on an offline dataset",
        description="Train OM2P (or a baseline) offline. Precedence: config defaults < --config YAML < "
        "flags < --set. `--help-config` lists every config field.",
    )
    train.add_argument("--env", help="environment name (default cooperative_navigation)")
    train.add_argument("--dataset", help="offline dataset .npz (default data/<env>/expert.npz)")
    train.add_argument("--algo", help="algorithm (default om2p)")
    train.add_argument("--steps", type=int, help="gradient steps")
    train.add_argument("--seed", type=int, help="random seed")
    train.add_argument("--out", help="run directory (default runs/<env>-<algo>-seed<seed>)")
    train.add_argument("--device", help="cpu or cuda")
    train.add_argument("--eval-every", type=int, dest="eval_every", help="steps between evaluations")
    train.add_argument("--eval-episodes", type=int, dest="eval_episodes", help="episodes per evaluation")
    train.add_argument("--config", help="YAML file of config fields")
    train.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field (repeatable)"
    )
    train.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its latest checkpoint"
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--help-config", action="store_true", help="list the config fields and exit")
    train.set_defaults(handler=_train)

    evaluate = subparsers.add_parser(
        "eval", help="evaluate a checkpoint in its environment", description="Evaluate a training checkpoint."
    )
    evaluate.add_argument("checkpoint", help="step directory, checkpoints/ directory or run directory")
    evaluate.add_argument("--episodes", type=int, default=50, help="episodes (seeds seed .. seed + K - 1)")
    evaluate.add_argument("--seed", type=int, default=100000, help="first evaluation seed")
    evaluate.add_argument("--env", help="refuse the checkpoint unless it was trained for this environment")
    evaluate.add_argument("--stochastic", action="store_true", help="seeded Gaussian noise instead of e = 0")
    evaluate.add_argument("--envs", type=int, default=25, help="environments stepped in lockstep")
    evaluate.add_argument("--device", default="cpu", help="cpu or cuda")
    evaluate.add_argument("--json", action="store_true", help="print JSON")
    evaluate.set_defaults(handler=_eval)


def _train(args: argparse.Namespace) -> int:
    from training.config import describe_fields, load_config

    if args.help_config:
        print(describe_fields())
        return 0
    config = load_config(
        args.config,
        args.set,
        env=args.env,
        dataset=args.dataset,
        algo=args.algo,
        steps=args.steps,
        seed=args.seed,
        device=args.device,
        eval_every=args.eval_every,
        eval_episodes=args.eval_episodes,
    )
    from training.envs import TRAINABLE_ENV_NAMES

    if config.env not in TRAINABLE_ENV_NAMES:
        choices = ", ".join(TRAINABLE_ENV_NAMES)
        raise ValueError(f"--env {config.env!r}: unknown environment; choose one of {choices}")
    from training.algos import get_algorithm

    get_algorithm(config.algo)
    from training.trainer import train

    out = args.out or f"runs/{config.env}-{config.algo}-seed{config.seed}"
    result = train(config, out, resume=args.resume, progress=not args.no_progress)
    summary = {"run_dir": str(result.run_dir), "checkpoint": str(result.checkpoint), "step": result.step}
    if result.evaluation is not None:
        summary.update(
            mean_return=result.evaluation["mean_return"],
            normalised_score=result.evaluation["normalised_score"],
            normalised_score_se=result.evaluation.get("normalised_score_se"),
        )
    print(json.dumps(summary))
    return 0


def _eval(args: argparse.Namespace) -> int:
    import torch

    from training.checkpoint import load_policy
    from training.trainer import evaluate

    if args.episodes < 1:
        raise ValueError(f"--episodes must be at least 1, got {args.episodes}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    policy, info = load_policy(args.checkpoint, device=args.device, env=args.env)
    seeds = range(args.seed, args.seed + args.episodes)
    result = evaluate(
        policy,
        info.env,
        seeds,
        min(args.envs, args.episodes),
        info.reference_returns,
        noise_seed=args.seed if args.stochastic else None,
    )
    report = {
        "checkpoint": str(info.path),
        "env": info.env,
        "algo": info.algo,
        "step": info.step,
        "episodes": args.episodes,
        "first_seed": args.seed,
        "deterministic": not args.stochastic,
        "mean_return": result["mean_return"],
        "std_return": result["std_return"],
        "normalised_score": result["normalised_score"],
        "normalised_score_se": result["normalised_score_se"],
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    score = report["normalised_score"]
    print(
        f"{info.env} {info.algo} step {info.step}: mean return {report['mean_return']:.3f} "
        f"(std {report['std_return']:.3f}, {args.episodes} episodes)"
        + (f", normalised score {score:.1f}" if score is not None else ", no reference returns recorded")
        + (
            f" +- {report['normalised_score_se']:.1f} (SE)"
            if report["normalised_score_se"] is not None
            else ""
        )
    )
    return 0
