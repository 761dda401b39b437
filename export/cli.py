"""`om2p export`: a checkpoint (or the newest one under a runs directory) -> `DIR/<name>/<version>/`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EPILOG = """examples:
  om2p export runs/cooperative_navigation-om2p --out models
  om2p export --newest runs --out models --fp16
  om2p export runs/cn-om2p --out server/bundled --name cooperative_navigation"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX (and TensorRT) with parity checks and a manifest",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "checkpoint", nargs="?", help="step directory, checkpoints/ directory or run directory"
    )
    parser.add_argument("--newest", metavar="RUNS", help="export the newest checkpoint under this directory")
    parser.add_argument("--out", default="models", help="model repository root (default: models)")
    parser.add_argument("--name", help="model name (default: the environment; <env>-<algo> for baselines)")
    parser.add_argument("--version", type=int, help="version number (default: the next free one)")
    parser.add_argument("--fp16", action="store_true", help="also write model.fp16.onnx (checked to 1e-2)")
    trt = parser.add_mutually_exclusive_group()
    trt.add_argument(
        "--tensorrt",
        action="store_true",
        help="require TensorRT engines (default: build them where available)",
    )
    trt.add_argument("--no-tensorrt", action="store_true", help="do not build TensorRT engines")
    parser.add_argument(
        "--exporter",
        choices=("dynamo", "torchscript"),
        default="dynamo",
        help="torch.onnx exporter (default: dynamo)",
    )
    parser.add_argument(
        "--eval-episodes",
        type=int,
        help="episodes evaluated with PyTorch and ONNX Runtime (default: the "
        "checkpoint's eval_episodes; 0: record the checkpoint's own evaluation)",
    )
    parser.add_argument(
        "--eval-seed", type=int, help="first evaluation seed (default: the checkpoint's eval_seed)"
    )
    parser.add_argument("--json", action="store_true", help="print the manifest as JSON at the end")
    parser.add_argument(
        "--print-schema", action="store_true", help="print manifest.json's JSON Schema and exit"
    )
    parser.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> int:
    if args.print_schema:
        from export.manifest import json_schema

        print(json.dumps(json_schema(), indent=2))
        return 0
    from om2p.errors import CommandError

    if (args.checkpoint is None) == (args.newest is None):
        raise CommandError("give a CHECKPOINT or --newest RUNS (exactly one)")
    from export.exporter import ExportOptions, export_checkpoint
    from export.runs import newest_checkpoint

    checkpoint = newest_checkpoint(Path(args.newest)) if args.newest else Path(args.checkpoint)
    options = ExportOptions(
        name=args.name,
        version=args.version,
        fp16=args.fp16,
        tensorrt="require" if args.tensorrt else "off" if args.no_tensorrt else "auto",
        exporter=args.exporter,
        eval_episodes=args.eval_episodes,
        eval_seed=args.eval_seed,
    )
    quiet = args.json
    result = export_checkpoint(checkpoint, Path(args.out), options, say=(lambda m: None) if quiet else print)
    if args.json:
        print(result.manifest.model_dump_json(indent=2))
    return 0
