"""``autolabel``: argument parsing only; every command is a thin call into the modules."""

from __future__ import annotations

import argparse
import sys

from pipeline.config import ConfigError, load_config
from pipeline.errors import redact

USER_ERRORS: tuple[type[Exception], ...] = (ConfigError,)


def build_parser() -> argparse.ArgumentParser:
    """The ``autolabel`` command line."""
    parser = argparse.ArgumentParser(
        prog="autolabel",
        description="Pseudo-label image collections with SAM 2's automatic mask generator on Ray.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run",
        help="label every image of an input into Parquet shards",
        description="Label every image of --input with SAM 2 masks, written to --output.",
    )
    run.add_argument("--input", required=True, help="folder, glob, fsspec URI or manifest file")
    run.add_argument("--output", required=True, help="output folder or fsspec URI")
    run.add_argument("--config", help="preset name (default, sa1b) or yaml path")
    run.add_argument("--overwrite", action="store_true", help="replace a run with other settings")
    run.add_argument("--no-progress", action="store_true", help="do not draw the progress bar")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")

    show = commands.add_parser("config", help="print the resolved config as yaml")
    show.add_argument("--config", help="preset name or yaml path")
    show.add_argument("overrides", nargs="*", metavar="key=value")

    random = commands.add_parser(
        "random-checkpoint",
        help="write a randomly initialised SAM 2 checkpoint (offline demos and tests)",
    )
    random.add_argument("--model-config", required=True, help="sam2 config name or yaml path")
    random.add_argument("--out", required=True, help="where to write the .pt file")
    random.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``autolabel`` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except USER_ERRORS + user_errors() as error:
        print(f"autolabel: error: {redact(str(error))}", file=sys.stderr)
        return 2


def user_errors() -> tuple[type[Exception], ...]:
    """Errors whose message is meant for the user as it is (one line, exit code 2)."""
    from pipeline.manifest import RunConflictError
    from pipeline.models import ModelError
    from pipeline.sources import InputError

    return (ModelError, InputError, RunConflictError)


def run_command(args: argparse.Namespace) -> int:
    """``autolabel run``: plan (fast checks), execute on Ray, print the summary."""
    from rich.console import Console

    from pipeline.progress import summary_table
    from pipeline.runner import execute, plan_run

    job = load_config(args.config, args.overrides)
    plan = plan_run(job, args.input, args.output, overwrite=args.overwrite)
    print(
        f"{plan.num_images} images in {len(plan.shards)} shards "
        f"({len(plan.shards) - len(plan.todo)} already committed); model {plan.model.config}",
        file=sys.stderr,
    )
    summary = execute(plan, show_progress=not args.no_progress)
    Console().print(summary_table(summary))
    # A plain line (never wrapped by the table) that users can copy.
    print(f"output: {summary.output}")
    return 0 if summary.succeeded else 1


def config_command(args: argparse.Namespace) -> int:
    """``autolabel config``: print the resolved config."""
    from omegaconf import OmegaConf

    from pipeline.config import as_dictconfig

    print(OmegaConf.to_yaml(as_dictconfig(load_config(args.config, args.overrides))), end="")
    return 0


def random_checkpoint_command(args: argparse.Namespace) -> int:
    """``autolabel random-checkpoint``: random weights in the official layout."""
    from pipeline.models import resolve_model, save_random_checkpoint

    spec = resolve_model(None, args.model_config, None)
    print(save_random_checkpoint(spec.config, args.out, seed=args.seed))
    return 0


COMMANDS = {
    "run": run_command,
    "config": config_command,
    "random-checkpoint": random_checkpoint_command,
}

if __name__ == "__main__":
    sys.exit(main())
