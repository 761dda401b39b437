"""`om2p loadgen` and `om2p control`."""

from __future__ import annotations

import argparse
import asyncio
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    loadgen = subparsers.add_parser("loadgen", help="drive POST /act: open loop (--rate) or closed loop")
    loadgen.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    load = loadgen.add_mutually_exclusive_group(required=True)
    load.add_argument("--rate", type=float, help="open loop: Poisson arrivals at this many requests/s")
    load.add_argument("--concurrency", type=int, help="closed loop: this many clients, one request each")
    load.add_argument("--sweep", type=str, help="open loop over comma-separated rates, e.g. 100,500,2000")
    loadgen.add_argument(
        "--duration", type=float, default=10.0, help="measured seconds (per rate in a sweep)"
    )
    loadgen.add_argument("--warmup", type=float, default=0.5, help="seconds sent first and not counted")
    loadgen.add_argument("--batch", type=int, default=1, help="environments (rows) per request")
    loadgen.add_argument("--binary", action="store_true", help="float32 body instead of JSON")
    loadgen.add_argument(
        "--max-connections",
        type=int,
        metavar="N",
        help="open loop: never more than N connections (like wrk's -c); an arrival that finds all N busy is "
        "not sent and counted as not_sent, not as a server error (default: no cap)",
    )
    loadgen.add_argument("--json", dest="json_out", metavar="OUT", help="write the summary as JSON")
    loadgen.add_argument(
        "--plot", metavar="PNG", help="with --sweep: accepted load, errors and latency against offered load"
    )
    loadgen.set_defaults(handler=_loadgen)

    control = subparsers.add_parser("control", help="run an environment with actions from the server")
    control.add_argument("--url", required=True, help="server base URL")
    control.add_argument("--env", required=True, help="environment name (see `om2p envs`)")
    control.add_argument(
        "--episodes", type=int, default=5, help="episodes to run (served, and in-process unless --no-compare)"
    )
    control.add_argument("--seed", type=int, default=0, help="first seed; episode k uses seed + k")
    control.add_argument("--n-envs", type=int, default=1, help="environments stepped together (batch rows)")
    control.add_argument("--model", help="model dir for the in-process run (default: the served model's)")
    control.add_argument("--no-compare", action="store_true", help="skip the in-process run")
    control.add_argument("--websocket", action="store_true", help="one WebSocket instead of HTTP per tick")
    control.add_argument("--json", action="store_true", help="print JSON instead of text")
    control.set_defaults(handler=_control)


def _loadgen(args: argparse.Namespace) -> int:
    from clients.loadgen import (
        format_summary,
        model_observations,
        plot_latency_vs_load,
        run_load,
        sweep,
        write_json,
    )

    if args.duration <= 0:
        raise ValueError(f"--duration must be > 0, got {args.duration}")
    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    if args.max_connections is not None and args.max_connections < 1:
        raise ValueError(f"--max-connections must be >= 1, got {args.max_connections}")
    if args.max_connections is not None and args.concurrency is not None:
        raise ValueError("--max-connections is for open loop (--rate, --sweep); --concurrency C opens C")
    observations = model_observations(args.url, args.batch)
    if args.sweep:
        try:
            rates = [float(rate) for rate in args.sweep.split(",") if rate.strip()]
        except ValueError:
            raise ValueError(f"--sweep: expected comma-separated numbers, got {args.sweep!r}") from None
        summaries = sweep(args.url, observations, rates, args.duration, args.binary, args.max_connections)
        for summary in summaries:
            print(format_summary(summary))
        if args.plot:
            plot_latency_vs_load(summaries, args.plot)
            print(f"plot: {args.plot}")
        if args.json_out:
            write_json({"sweep": summaries}, args.json_out)
        return 0
    if args.plot:
        raise ValueError("--plot needs --sweep (a load curve needs several loads)")
    result = asyncio.run(
        run_load(
            args.url,
            observations,
            args.duration,
            rate=args.rate,
            concurrency=args.concurrency,
            binary=args.binary,
            warmup_s=args.warmup,
            max_connections=args.max_connections,
        )
    )
    summary = result.summary()
    print(format_summary(summary))
    if args.json_out:
        write_json(summary, args.json_out)
    return 0


def _control(args: argparse.Namespace) -> int:
    from clients.control import format_report, run_control

    if args.episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {args.episodes}")
    report = run_control(
        args.url,
        args.env,
        args.episodes,
        seed=args.seed,
        n_envs=args.n_envs,
        model=args.model,
        compare=not args.no_compare,
        websocket=args.websocket,
    )
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return 0
