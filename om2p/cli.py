"""The `om2p` command line. Each part of the product registers its own subcommands; heavy imports
(torch, onnxruntime, environments) happen inside the handlers so that `om2p serve` never imports torch."""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from om2p.errors import CommandError

# Each module exposes `register(subparsers)`; the order is the order of `om2p --help`.
COMMAND_MODULES = (
    "training.data.cli",  # om2p data ...
    "training.cli",  # om2p train, om2p eval
    "export.cli",  # om2p export
    "server.cli",  # om2p serve
    "clients.cli",  # om2p loadgen, om2p control
)


DESCRIPTION = (
    "Train, export and serve one-step multi-agent policies (OM2P): make offline datasets, train a policy on "
    "one, export it to ONNX, serve it over HTTP, and drive the server with the load generator or a control "
    "loop."
)
EPILOG = "Run `om2p COMMAND --help` for a command's options and their defaults."


class _DefaultsShown(argparse.HelpFormatter):
    """Appends `(default: X)` to an option's help, unless its help already names the default or the option
    has none (None, a flag that is off)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text, default = action.help or "", action.default
        if (
            not action.option_strings
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or default == []
            or "default" in text.lower()
        ):
            return action.help
        shown = " ".join(map(str, default)) if isinstance(default, list | tuple) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


class _Parser(argparse.ArgumentParser):
    """Every `om2p` parser, subcommands included (argparse makes subparsers of the parent's class): its
    help shows the options' defaults, whatever formatter the subcommand chose for its text."""

    def __init__(self, *args, **kwargs) -> None:
        chosen = kwargs.get("formatter_class", argparse.HelpFormatter)
        kwargs["formatter_class"] = type(f"DefaultsShown{chosen.__name__}", (_DefaultsShown, chosen), {})
        super().__init__(*args, **kwargs)


def _describe_subcommands(parser: argparse.ArgumentParser) -> None:
    """A subcommand registered with only a one-line `help` gets it as its `--help` description too, as a
    sentence, so that `om2p data collect --help` says what the command does."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        summaries = {choice.dest: choice.help for choice in action._choices_actions}
        for name, subparser in action.choices.items():
            summary = summaries.get(name)
            if subparser.description is None and summary:
                subparser.description = (
                    summary[0].upper() + summary[1:] + ("" if summary.endswith(".") else ".")
                )
            _describe_subcommands(subparser)


def _envs(args: argparse.Namespace) -> int:
    from training.envs import ENV_NAMES, env_spec

    specs = [env_spec(name).to_dict() for name in ENV_NAMES]
    if args.json:
        print(json.dumps(specs, indent=2))
        return 0
    for spec in specs:
        print(f"{spec['name']}  ({spec['backend']}, {spec['episode_length']} steps per episode)")
        for index, agent in enumerate(spec["agents"]):
            low, high = spec["native_low"][index], spec["native_high"][index]
            bounds = f"[{min(low):g}, {max(high):g}]"
            print(
                f"  {agent:<16} obs {spec['obs_dims'][index]:>3}  act {spec['act_dims'][index]:>2}"
                f"  native bounds {bounds}"
            )
        if spec["opponents"]:
            print(f"  fixed policy for: {', '.join(spec['opponents'])}")
        if spec["padded"]:
            print(f"  padded to obs {spec['obs_dim']}, act {spec['act_dim']} (masks in the metadata)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="om2p", description=DESCRIPTION, epilog=EPILOG)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    envs = subparsers.add_parser("envs", help="list the benchmark environments and their dims")
    envs.add_argument("--json", action="store_true", help="print JSON instead of text")
    envs.set_defaults(handler=_envs)
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            # Skip a part that is not in this build; a missing dependency of a part that is, is an error.
            if error.name is None or not module_name.startswith(error.name):
                raise
            continue
        module.register(subparsers)
    _describe_subcommands(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (CommandError, FileNotFoundError, ValueError) as error:
        print(f"om2p {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
