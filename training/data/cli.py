"""`om2p data ...`: train behaviour policies, ship them, collect, describe and import datasets."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

DEFAULT_TRANSITIONS = 25_000
"""`make-default` size per dataset: whole minutes on two cores; the paper's size is 1_000_000."""
PAPER_TRANSITIONS = 1_000_000
"""`collect`'s default size per dataset, the paper's."""


def _train_behaviour(args: argparse.Namespace) -> int:
    from training.behaviour.matd3 import MATD3Config, train
    from training.envs import ENV_NAMES

    if args.env not in ENV_NAMES:
        raise ValueError(f"--env: unknown environment {args.env!r}; choose one of {', '.join(ENV_NAMES)}")
    config = MATD3Config(env=args.env, steps=args.steps, seed=args.seed)
    for name in (
        "n_envs",
        "eval_interval",
        "warmup",
        "updates_per_step",
        "exploration_noise",
        "action_penalty",
        "pursuit_shaping",
        "threads",
    ):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    history = train(config, Path(args.out), resume=args.resume)
    best = max(history, key=lambda h: h["mean_return"])
    print(
        f"{args.out}: {len(history)} evaluations; best return {best['mean_return']:.2f} at step {best['step']}"
    )
    return 0


def _ship_behaviour(args: argparse.Namespace) -> int:
    from training.behaviour.registry import ship_behaviour

    manifest = ship_behaviour(
        Path(args.run),
        args.env,
        Path(args.root) if args.root else None,
        eval_episodes=args.episodes,
        selection_episodes=args.selection_episodes,
        reference_episodes=args.reference_episodes,
    )
    for quality, entry in manifest["qualities"].items():
        print(
            f"{quality:<8} step {entry['step']:>8}  mean return {entry['mean_return']:.2f} +- {entry['std_return']:.2f}"
        )
    print(
        f"medium-replay: {len(manifest['medium_replay']['actors'])} actors up to step "
        f"{manifest['medium_replay']['until_step']}"
    )
    return 0


def _collect(args: argparse.Namespace) -> int:
    from training.data.collect import collect
    from training.data.describe import describe, format_summary
    from training.data.format import save_dataset

    dataset = collect(
        args.env,
        args.quality,
        args.transitions,
        args.seed,
        checkpoints_root=Path(args.checkpoints) if args.checkpoints else None,
    )
    path = save_dataset(args.out, dataset)
    print(format_summary(describe(dataset, path)))
    return 0


def _describe(args: argparse.Namespace) -> int:
    from training.data.describe import describe, format_summary, plot_returns
    from training.data.format import load_dataset

    dataset = load_dataset(args.file, env=args.env)
    summary = describe(dataset, args.file)
    if args.plot:
        plot_returns([(summary["quality"], dataset)], args.plot)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_summary(summary))
        if args.plot:
            print(f"  histogram         {args.plot}")
    return 0


def _make_default(args: argparse.Namespace) -> int:
    from training.data.collect import collect
    from training.data.describe import describe, format_summary, plot_returns
    from training.data.format import QUALITIES, save_dataset

    out = Path(args.out)
    made = []
    for env in args.envs:
        datasets = []
        for quality in QUALITIES:
            started = time.perf_counter()
            dataset = collect(env, quality, args.transitions, args.seed)
            path = save_dataset(out / env / f"{quality}.npz", dataset)
            print(
                format_summary(describe(dataset, path)) + f"\n  made in {time.perf_counter() - started:.0f} s"
            )
            datasets.append((quality, dataset))
            made.append(path)
        if args.plot_dir:
            plot = plot_returns(datasets, Path(args.plot_dir) / f"{env}_returns.png")
            print(f"{plot}: episode-return histograms")
    return 0


def _report(args: argparse.Namespace) -> int:
    from training.data.report import write_report

    out = Path(args.out)
    summaries = write_report(Path(args.data), args.envs, out, measure_load=not args.no_load_time)
    for env in args.envs:
        scores = ", ".join(f"{q} {s['normalised_score']:.1f}" for q, s in summaries.get(env, {}).items())
        print(f"{env}: {scores or 'no datasets'}")
    if "load_time" in summaries:
        timing = summaries["load_time"]
        print(f"{timing['transitions']:,} transitions load in {timing['load_s']:.2f} s")
    print(f"wrote {out}")
    return 0


def _import_omar(args: argparse.Namespace) -> int:
    from training.data.describe import describe, format_summary
    from training.data.format import save_dataset
    from training.data.omar import import_omar, omar_data_dir

    refs = {
        "expert": {"mean": args.expert_return, "se": args.expert_se, "episodes": args.reference_episodes},
        "random": {"mean": args.random_return, "se": args.random_se, "episodes": args.reference_episodes},
    }
    data_dir = omar_data_dir(Path(args.root), args.env, args.quality, args.seed)
    dataset = import_omar(data_dir, args.env, args.quality, args.seed, references=refs)
    path = save_dataset(args.out, dataset)
    print(format_summary(describe(dataset, path)))
    return 0


def _force2d(args: argparse.Namespace) -> int:
    from training.data.describe import describe, format_summary
    from training.data.force2d import SOURCE_ENV, to_force_actions
    from training.data.format import load_dataset, save_dataset

    dataset = to_force_actions(load_dataset(args.dataset, env=SOURCE_ENV), args.dataset)
    path = save_dataset(args.out, dataset)
    print(format_summary(describe(dataset, path)))
    return 0


def _references(args: argparse.Namespace) -> int:
    from training.data.references import measure_references, write_references
    from training.envs import ENV_NAMES

    if args.env not in ENV_NAMES:
        raise ValueError(f"--env: unknown environment {args.env!r}; choose one of {', '.join(ENV_NAMES)}")
    root = Path(args.root) if args.root else None
    references = measure_references(args.env, args.episodes, root)
    path = write_references(args.env, references, root)
    for quality in ("expert", "random"):
        entry = references[quality]
        print(f"{quality:<7} {entry['mean']:.3f} +- {entry['se']:.3f} (SE, {entry['episodes']} episodes)")
    print(f"wrote {path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from training.data.format import QUALITIES
    from training.envs import ENV_NAMES

    data = subparsers.add_parser("data", help="offline datasets: behaviour policies, collection, description")
    sub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")

    # The MATD3 options default to MATD3Config's values (stated here, checked against it by the tests:
    # importing the config would import torch for every `om2p --help`).
    p = sub.add_parser("train-behaviour", help="train a MATD3 behaviour policy online (resumable)")
    p.add_argument("--env", required=True, choices=ENV_NAMES, help="benchmark environment")
    p.add_argument("--steps", type=int, default=200_000, help="environment transitions")
    p.add_argument("--seed", type=int, default=0, help="seeds torch, numpy and the episodes")
    p.add_argument("--out", required=True, help="run directory (checkpoints, evaluations.json, state/)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/state if present")
    p.add_argument(
        "--n-envs", dest="n_envs", type=int, help="environments stepped in lockstep (MATD3 default: 4)"
    )
    p.add_argument(
        "--eval-interval",
        dest="eval_interval",
        type=int,
        help="transitions between evaluations and checkpoints (MATD3 default: 5000)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        help="transitions of uniform random actions before learning (MATD3 default: 5000)",
    )
    p.add_argument(
        "--updates-per-step",
        dest="updates_per_step",
        type=float,
        help="gradient updates per collected transition (MATD3 default: 0.25)",
    )
    p.add_argument(
        "--exploration-noise",
        dest="exploration_noise",
        type=float,
        help="std of the Gaussian action noise while collecting; sparse rewards need more than the MATD3 "
        "default: 0.1",
    )
    p.add_argument(
        "--action-penalty",
        dest="action_penalty",
        type=float,
        help="weight of the squared pre-tanh actor output (MADDPG: 1e-3); stops tanh saturation (MATD3 "
        "default: 0.0)",
    )
    p.add_argument(
        "--pursuit-shaping",
        dest="pursuit_shaping",
        type=float,
        help="weight of a per-step distance cost toward the evaders (predator_prey, world); training only "
        "(MATD3 default: 0.0)",
    )
    p.add_argument("--threads", type=int, help="torch threads (MATD3 default: 1)")
    p.set_defaults(handler=_train_behaviour)

    p = sub.add_parser(
        "ship-behaviour", help="pick random/medium/expert from a MATD3 run into the shipped set"
    )
    p.add_argument("--env", required=True, choices=ENV_NAMES, help="benchmark environment of the run")
    p.add_argument("--run", required=True, help="run directory of train-behaviour")
    p.add_argument("--root", help="checkpoint root (default training/behaviour/checkpoints)")
    p.add_argument("--episodes", type=int, default=100, help="evaluation episodes for the reference returns")
    p.add_argument(
        "--selection-episodes",
        dest="selection_episodes",
        type=int,
        default=0,
        help="re-evaluate every checkpoint with this many episodes and pick on those (sparse rewards); "
        "0 picks on the run's own evaluations",
    )
    p.add_argument(
        "--reference-episodes",
        dest="reference_episodes",
        type=int,
        default=1000,
        help="episodes per reference policy (expert, random) written to references.json",
    )
    p.set_defaults(handler=_ship_behaviour)

    p = sub.add_parser(
        "references",
        help="measure the expert and random reference returns (with SEs) into the checkpoints' references.json",
    )
    p.add_argument("--env", required=True, choices=ENV_NAMES, help="benchmark environment")
    p.add_argument("--episodes", type=int, default=1000, help="episodes per reference policy")
    p.add_argument("--root", help="checkpoint root (default: training/behaviour/checkpoints)")
    p.set_defaults(handler=_references)

    p = sub.add_parser(
        "collect",
        help="record one dataset from the shipped behaviour checkpoints",
        description="Record one dataset from the shipped behaviour checkpoints. The default size is the "
        f"paper's, {PAPER_TRANSITIONS:,} transitions: {PAPER_TRANSITIONS // DEFAULT_TRANSITIONS} times the "
        f"{DEFAULT_TRANSITIONS:,} per dataset of `om2p data make-default` (what `make data` runs).",
    )
    p.add_argument("--env", required=True, choices=ENV_NAMES, help="benchmark environment")
    p.add_argument("--quality", required=True, choices=QUALITIES, help="which behaviour policy records")
    p.add_argument(
        "--transitions",
        type=int,
        default=PAPER_TRANSITIONS,
        help="at least this many, rounded up to whole episodes",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds the episodes and the behaviour noise; datasets of different seeds share no episode",
    )
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--checkpoints", help="behaviour checkpoint root (default: the shipped ones)")
    p.set_defaults(handler=_collect)

    p = sub.add_parser("describe", help="size, return statistics and normalised score of a dataset")
    p.add_argument("file", help="dataset .npz")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--plot", metavar="PNG", help="write the episode-return histogram")
    p.add_argument("--env", help="also check the file is for this environment")
    p.set_defaults(handler=_describe)

    p = sub.add_parser("make-default", help="build the default small set (what `make data` runs)")
    p.add_argument("--out", default="data", help="writes OUT/<env>/<quality>.npz")
    p.add_argument(
        "--envs", nargs="+", default=["cooperative_navigation"], choices=ENV_NAMES, help="environments"
    )
    p.add_argument("--transitions", type=int, default=DEFAULT_TRANSITIONS, help="per dataset")
    p.add_argument("--seed", type=int, default=0, help="seeds the episodes and the behaviour noise")
    p.add_argument("--plot-dir", dest="plot_dir", help="write <env>_returns.png here")
    p.set_defaults(handler=_make_default)

    p = sub.add_parser("report", help="write docs/datasets.md (+ histograms) from the datasets on disk")
    p.add_argument("--data", default="data", help="directory holding <env>/<quality>.npz")
    p.add_argument("--envs", nargs="+", default=list(ENV_NAMES), choices=ENV_NAMES, help="environments")
    p.add_argument("--out", default="docs/datasets.md", help="markdown file to write")
    p.add_argument("--no-load-time", action="store_true", help="skip the one-million-transition load timing")
    p.set_defaults(handler=_report)

    p = sub.add_parser(
        "import-omar", help="convert the public OMAR/OM2P layout ({env}/{quality}/seed_{s}_data)"
    )
    p.add_argument("--root", required=True, help="directory holding {env}/{quality}/seed_{s}_data")
    p.add_argument("--env", required=True, choices=ENV_NAMES, help="benchmark environment")
    p.add_argument("--quality", required=True, choices=QUALITIES, help="dataset quality")
    p.add_argument("--seed", type=int, default=0, help="which seed_{s}_data directory")
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument(
        "--expert-return", dest="expert_return", type=float, required=True, help="expert reference return"
    )
    p.add_argument(
        "--random-return", dest="random_return", type=float, required=True, help="random reference return"
    )
    p.add_argument("--expert-se", dest="expert_se", type=float, help="standard error of the expert reference")
    p.add_argument("--random-se", dest="random_se", type=float, help="standard error of the random reference")
    p.add_argument(
        "--reference-episodes", dest="reference_episodes", type=int, help="episodes behind each reference"
    )
    p.set_defaults(handler=_import_omar)

    p = sub.add_parser(
        "force2d",
        help="a cooperative_navigation dataset with 2-D force actions (env cooperative_navigation_force2d)",
        description="Rewrite a cooperative_navigation dataset's actions as the 2-D forces they apply (the "
        "original particle environments' action space, which the MADDPG and OMAR code use); observations, "
        "rewards and references are unchanged.",
    )
    p.add_argument("--dataset", required=True, help="cooperative_navigation dataset .npz")
    p.add_argument("--out", required=True, help="output .npz")
    p.set_defaults(handler=_force2d)
