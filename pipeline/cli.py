"""``autolabel``: argument parsing only; every command is a thin call into the modules."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable

from pipeline.core.config import ConfigError, load_config
from pipeline.core.errors import OperationError, UserError, one_line, redact
from pipeline.core.storage import open_location


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
    run.add_argument(
        "--input", required=True, type=path, help="folder, glob, fsspec URI or manifest file"
    )
    run.add_argument("--output", required=True, type=path, help="output folder or fsspec URI")
    run.add_argument(
        "--prompts",
        type=path,
        help="label these boxes/clicks instead of the automatic grid: a COCO instances JSON, "
        "a YOLO label folder, or a Parquet/CSV table (image_uri, box and/or points)",
    )
    run.add_argument("--config", help="preset name (default, sa1b) or yaml path")
    run.add_argument("--overwrite", action="store_true", help="replace a run with other settings")
    run.add_argument(
        "--append",
        action="store_true",
        help="the input has grown: label the images no shard holds into new shards",
    )
    run.add_argument("--no-progress", action="store_true", help="do not draw the progress bar")
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="list and plan as the run would (images, shards, what an append adds, prompts "
        "matched) and print the plan; writes nothing, exits 2 where the run would be refused",
    )
    add_storage_flag(run)
    run.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")

    config = commands.add_parser("config", help="print the resolved config as yaml")
    config.add_argument("--config", help="preset name or yaml path")
    add_storage_flag(config)
    config.add_argument("overrides", nargs="*", metavar="key=value")

    filter_ = commands.add_parser(
        "filter",
        help="write a new run with only the masks that pass score/area filters",
        description="Copy RUN to OUT keeping only the masks that pass the filters.",
    )
    filter_.add_argument("run", type=path, help="the run to read (path or URI)")
    filter_.add_argument("out", type=path, help="where to write the filtered run (path or URI)")
    filter_.add_argument("--overwrite", action="store_true", help="replace a run at OUT")
    filter_.add_argument(
        "--partial", action="store_true", help="filter an unfinished run as it stands"
    )
    add_filter_flags(filter_)
    add_storage_flag(filter_)
    add_cluster_flags(filter_)

    stats = commands.add_parser("stats", help="summary table, JSON and plots of a run")
    stats.add_argument("run", type=path, help="the run (path or URI)")
    stats.add_argument("--out", type=path, help="folder for stats.json and the PNG plots")
    add_storage_flag(stats)
    add_cluster_flags(stats)

    export = commands.add_parser(
        "export", help="export a run as COCO or SA-1B JSON, label-map PNGs or cut-outs"
    )
    export.add_argument("run", type=path, help="the run (path or URI)")
    export.add_argument(
        "--format",
        choices=("coco", "sa1b", "png", "cutouts"),
        required=True,
        help="coco: one instances JSON; sa1b: a JSON per image; png: a 16-bit instance label "
        "map per image (with a JSON of mask_index per value); cutouts: an RGBA PNG per mask",
    )
    export.add_argument(
        "--out",
        required=True,
        type=path,
        help="coco: the JSON file; the other formats: a folder",
    )
    export.add_argument(
        "--partial",
        action="store_true",
        help="export an unfinished run (fewer committed shards than planned) as it stands",
    )
    add_filter_flags(export)
    add_storage_flag(export)
    add_cluster_flags(export)

    show = commands.add_parser("show", help="draw masks over images into PNGs")
    show.add_argument("run", type=path, help="the run (path or URI)")
    show.add_argument("--out", required=True, type=path, help="folder for the overlay PNGs")
    show.add_argument("--image-id", type=int, action="append", help="an image to draw")
    show.add_argument(
        "--sample", type=at_least(1), help="draw this many random ok images (default 8)"
    )
    show.add_argument("--seed", type=int, default=0, help="seed of the random sample")
    add_filter_flags(show)
    add_storage_flag(show)

    evaluate = commands.add_parser(
        "eval", help="class-agnostic COCO metrics of a run against ground truth"
    )
    evaluate.add_argument("run", type=path, help="the run (path or URI)")
    evaluate.add_argument(
        "--gt", required=True, type=path, help="COCO instances JSON of the same images"
    )
    evaluate.add_argument("--out", type=path, help="folder for eval.json and thresholds.png")
    add_storage_flag(evaluate)

    compare = commands.add_parser(
        "compare", help="compare two runs over the same images, mask by mask"
    )
    compare.add_argument("a", type=path, help="the first run (path or URI)")
    compare.add_argument("b", type=path, help="the second run (path or URI)")
    compare.add_argument(
        "--iou",
        type=fraction,
        default=0.5,
        help="IoU at which a pair of masks counts as the same mask (default 0.5)",
    )
    compare.add_argument(
        "--out", type=path, help="folder for compare.json, images.parquet and iou.png"
    )
    add_storage_flag(compare)
    add_cluster_flags(compare)

    view = commands.add_parser(
        "view",
        help="browse a run's masks in a local web page and pick filter thresholds",
        description="Serve a page over RUN: a paged grid of images with their masks, sliders "
        "for the score and area filters with live counts, and the matching filter command.",
    )
    view.add_argument("run", type=path, help="the run (path or URI); committed shards only")
    view.add_argument(
        "--compare",
        metavar="B",
        type=path,
        help="a second run over the same images: show both runs' masks side by side, with "
        "each image's agreement (sort worst first); the numbers of autolabel compare",
    )
    view.add_argument(
        "--iou",
        type=fraction,
        help="with --compare: IoU at which a pair of masks counts as the same mask (default 0.5)",
    )
    add_server_flags(view)
    add_storage_flag(view)

    tune = commands.add_parser(
        "tune",
        help="try generator settings on a few images in a local web page",
        description="Serve a page that runs the mask generator on a few images of --input "
        "with settings edited on the page, and gives them as overrides and a preset.",
    )
    tune.add_argument(
        "--input", required=True, type=path, help="folder, glob, fsspec URI or manifest file"
    )
    tune.add_argument("--config", help="preset name (default, sa1b) or yaml path to start from")
    tune.add_argument("--sample", type=at_least(1), default=4, help="images to try on (default 4)")
    add_server_flags(tune)
    add_storage_flag(tune)
    tune.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")

    synth = commands.add_parser(
        "synth", help="write synthetic scenes with exact instance masks (COCO JSON)"
    )
    synth.add_argument("--n", type=at_least(1), required=True, help="number of scenes")
    synth.add_argument("--seed", type=int, default=0, help="dataset seed")
    synth.add_argument(
        "--out", required=True, type=path, help="folder: images/ and annotations.json"
    )
    synth.add_argument("--size", type=at_least(16), default=256, help="image side in pixels")
    synth.add_argument("--difficulty", type=fraction, default=1.0, help="0 (easy) to 1 (hard)")
    add_storage_flag(synth)

    random = commands.add_parser(
        "random-checkpoint",
        help="write a randomly initialised SAM 2 checkpoint (offline demos and tests)",
    )
    random.add_argument(
        "--model-config", required=True, type=path, help="sam2 config name or yaml path"
    )
    random.add_argument("--out", required=True, type=path, help="where to write the .pt file")
    random.add_argument("--seed", type=int, default=0)
    return parser


def at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    """An integer argument of at least ``low`` (and at most ``high``): anything else is a
    usage error (a negative count would silently keep or write nothing)."""

    def parse(value: str) -> int:
        number = int(value)  # not a number: argparse's "invalid int value"
        if number < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, not {number}")
        if high is not None and number > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}, not {number}")
        return number

    parse.__name__ = "int"
    return parse


def fraction(value: str) -> float:
    """A number from 0 to 1."""
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, not {value}")
    return number


def path(value: str) -> str:
    """A path or URI argument: an empty one (an unset variable in a script) is a usage error,
    never the current folder."""
    if not value.strip():
        raise argparse.ArgumentTypeError("an empty path (an unset variable?); give a folder or URI")
    return value


def add_storage_flag(parser: argparse.ArgumentParser) -> None:
    """``--storage-option KEY=VALUE``: fsspec options for the run's (and outputs') storage."""
    parser.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fsspec option for object storage, e.g. endpoint_url=http://… (repeatable; "
        "dotted keys nest: client_kwargs.region_name=eu-west-1; default: the AWS_* variables)",
    )


def add_cluster_flags(parser: argparse.ArgumentParser) -> None:
    """``--ray`` / ``--ray-address``: work shard by shard as Ray tasks on a cluster."""
    group = parser.add_argument_group("on a cluster (default: one process on this machine)")
    group.add_argument(
        "--ray",
        action="store_true",
        help="one Ray task per shard: joins RAY_ADDRESS or a running cluster, else starts one",
    )
    group.add_argument("--ray-address", metavar="ADDRESS", help="the Ray cluster to use")
    group.add_argument("--no-progress", action="store_true", help="do not draw the progress bar")


def shard_pool(args: argparse.Namespace):
    """Where the command's shards run: this process, or Ray tasks (``--ray``)."""
    from pipeline.core.executor import ShardPool

    return ShardPool(args.ray, args.ray_address, show_progress=not args.no_progress)


def add_server_flags(parser: argparse.ArgumentParser) -> None:
    """``--host`` and ``--port`` of a local web page."""
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: loopback only)"
    )
    parser.add_argument(
        "--port", type=at_least(0, 65535), default=0, help="port (default: 0, a free one)"
    )


def storage_options(pairs: list[str]) -> dict:
    """``["a=1", "b.c=x"]`` → ``{"a": 1, "b": {"c": "x"}}`` (values parsed as JSON when they
    are JSON, else kept as strings)."""
    import json

    options: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--storage-option {pair!r} is not KEY=VALUE")
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        *parents, leaf = key.split(".")
        node = options
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = parsed
    return options


def config_overrides(args: argparse.Namespace) -> list[str]:
    """A config-taking command's overrides, its ``--storage-option KEY=VALUE`` s first as
    ``storage.options.KEY=VALUE`` (one setting, spelled as every command spells it). Values
    are read as the other commands read them (JSON, else a string: ``0123`` stays a string)
    and handed to the config as JSON, which its YAML reading keeps as they are."""
    import json

    def dotted(tree: dict, prefix: str) -> list[str]:
        items = []
        for key, value in tree.items():
            if isinstance(value, dict):
                items += dotted(value, f"{prefix}{key}.")
            else:
                items.append(f"{prefix}{key}={json.dumps(value)}")
        return items

    return dotted(storage_options(args.storage_option), "storage.options.") + args.overrides


def writable_as(flag: str, uri: str | None, kind: str, options: dict | None = None) -> None:
    """Refuse an output that exists as the other kind (a file where a folder is written, a
    folder where a file is), before any work: one line, not a traceback at the end.

    Args:
        flag: the option's name, for the message (``--out``).
        uri: the output as given (None: no output asked for).
        kind: ``folder`` or ``file``.
        options: storage options to open it with.
    """
    if uri is None:
        return
    where = open_location(uri, options or {})
    try:
        is_folder = where.fs.isdir(where.path)
        is_file = not is_folder and where.fs.isfile(where.path)
    except Exception:  # unreachable storage: the command's own access says why
        return
    if kind == "folder" and is_file:
        raise UserError(f"{flag} {uri} is a file; give a folder (it is created if missing)")
    if kind == "file" and is_folder:
        raise UserError(
            f"{flag} {uri} is a folder; give a file path, e.g. {uri.rstrip('/')}/coco.json"
        )
    if where.is_local:
        writable_here(flag, uri, where.path)


def writable_here(flag: str, uri: str, path: str) -> None:
    """Refuse a local output this user may not write (a read-only folder), before any work."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    folder = existing if os.path.isdir(existing) else os.path.dirname(existing)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OperationError(f"{flag} {uri}: cannot write in {folder} (permission denied)")


def locations(args: argparse.Namespace, *uris: str):
    """The command's URIs opened with its ``--storage-option`` s."""
    options = storage_options(args.storage_option)
    return [open_location(uri, options) for uri in uris]


def add_filter_flags(parser: argparse.ArgumentParser) -> None:
    """The mask filter flags shared by filter, export and show."""
    group = parser.add_argument_group("mask filters (all bounds inclusive)")
    group.add_argument("--min-predicted-iou", type=float, metavar="X")
    group.add_argument("--min-stability-score", type=float, metavar="X")
    group.add_argument("--min-area", type=at_least(0), metavar="PIXELS")
    group.add_argument("--max-area", type=at_least(0), metavar="PIXELS")
    group.add_argument("--min-area-fraction", type=fraction, metavar="F", help="of the image")
    group.add_argument("--max-area-fraction", type=fraction, metavar="F", help="of the image")
    group.add_argument("--top-k", type=at_least(1), metavar="K", help="per image, by predicted IoU")
    group.add_argument(
        "--where",
        metavar="EXPR",
        # every column of results.filters.WHERE_COLUMNS (tests/test_config.py holds them
        # equal; importing it here would load pyarrow for every command's --help)
        help="Python-syntax predicate over image_id, mask_index, area, predicted_iou, "
        "stability_score, box_iou, category_id, source_score (the last three in prompted "
        "runs), e.g. 'predicted_iou * stability_score > 0.85'",
    )


def mask_filter_from(args: argparse.Namespace):
    """Build the MaskFilter from the parsed filter flags."""
    from dataclasses import fields

    from pipeline.results.filters import MaskFilter, parse_where

    if args.where:
        parse_where(args.where)  # a bad expression fails before any data is read
    # The flags are the filter's fields, dashed (``--min-area-fraction``).
    return MaskFilter(**{field.name: getattr(args, field.name) for field in fields(MaskFilter)})


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with ``key=value`` overrides allowed anywhere among a command's
    options (``config amg.points_per_side=8 --config sa1b amg.pred_iou_thresh=0.5``):
    argparse alone rejects an override after an option."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    (commands,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    command = argv[0] if argv else None
    sub = commands.choices.get(command) if command else None
    if sub is None or not any(a.dest == "overrides" for a in sub._actions):
        return parser.parse_args(argv)
    args = sub.parse_intermixed_args(argv[1:])
    args.command = command
    return args


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, ``kill``), handled as Ctrl-C is."""


def terminate(signum: int, frame) -> None:
    """The SIGTERM handler: unwind as Ctrl-C does, so every ``finally`` runs."""
    raise Terminated


INTERRUPTED = {
    "run": "interrupted; rerun the same command to resume (finished shards are kept)",
    "filter": "interrupted; rerun the same command to finish (finished shards are kept)",
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``autolabel`` command; returns the exit code: 0 done, 1 failed,
    2 a usage error, 130 Ctrl-C, 143 SIGTERM. Every expected error (bad input, storage,
    permissions) is one line on stderr (``AUTOLABEL_TRACEBACK=1`` shows an OSError's
    traceback); an unexpected exception is a bug and keeps its traceback."""
    args = parse(argv)
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        return COMMANDS[args.command](args)
    except UserError as error:
        # raised in a Ray task, it arrives as a RayTaskError that is also the UserError, with
        # Ray's traceback in its text: the message is the cause's
        message = str(getattr(error, "cause", None) or error).strip().splitlines() or [""]
        print(f"autolabel: error: {redact(message[0])}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt as stop:
        print(f"autolabel: {INTERRUPTED.get(args.command, 'interrupted')}", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT)
    except OSError as error:  # a folder it may not write, a full disk, a lost mount
        if os.environ.get("AUTOLABEL_TRACEBACK"):
            raise
        print(f"autolabel: error: {one_line(error)}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_command(args: argparse.Namespace) -> int:
    """``autolabel run``: plan (fast checks), execute on Ray, print the summary."""
    from rich.console import Console

    from pipeline.job.progress import summary_table
    from pipeline.job.runner import execute, failure_reason, plan_run

    job = load_config(args.config, config_overrides(args))
    writable_as("--output", args.output, "folder", job.storage.options)
    source, output = (open_location(uri, job.storage.options) for uri in (args.input, args.output))
    prompts = open_location(args.prompts, job.storage.options) if args.prompts else None
    plan = plan_run(
        job,
        source,
        output,
        overwrite=args.overwrite,
        prompts=prompts,
        append=args.append,
        dry_run=args.dry_run,
    )
    if plan.dry_run:
        print("\n".join(dry_run_report(plan)))
        return 0
    try:
        say_plan(plan)
    except BaseException:
        plan.lease.release()
        raise
    summary = execute(plan, show_progress=not args.no_progress)
    Console().print(summary_table(summary))
    # Plain lines (never wrapped by the table) that users can copy.
    print(f"output: {summary.output}")
    if not summary.succeeded:
        print(f"failed: {failure_reason(summary)}")
    return 0 if summary.succeeded else 1


def say_plan(plan) -> None:
    """What the run will do, on stderr: images, shards, model, images no longer listed."""
    print(
        f"{plan.num_images} images in {len(plan.shards)} shards "
        f"({len(plan.shards) - len(plan.todo)} already committed); model {plan.model.config}",
        file=sys.stderr,
    )
    from pipeline.job.sources import Tally, skipped_note

    skipped = plan.manifest["listing"].get("skipped") or {}
    note = skipped_note({kind: Tally(**tally) for kind, tally in skipped.items()})
    if note:
        print(f"note: listing: {note}", file=sys.stderr)
    prompts = plan.manifest.get("prompts") or {}
    if prompts.get("unmatched"):
        print(
            f"note: {prompts['unmatched']} prompt(s) are for images not in the input "
            f"(e.g. {prompts['unmatched_examples'][0]})",
            file=sys.stderr,
        )
    if prompts.get("names_file"):
        print(f"note: class names from {prompts['names_file']}", file=sys.stderr)
    removed = plan.manifest["listing"].get("removed") or {"count": 0}
    if removed["count"]:
        print(
            f"note: {removed['count']} image(s) of the run are no longer in the input "
            f"(e.g. {removed['examples'][0]}); their rows stay in the run",
            file=sys.stderr,
        )


MODES = {
    "new": "a new run",
    "resume": "resumes the run there (same input and settings)",
    "append": "appends to the run there (--append)",
    "replace": "replaces the run there (--overwrite; its files go once the workers start)",
}


def dry_run_report(plan) -> list[str]:
    """What ``run --dry-run`` prints: the plan a run with these arguments would execute."""
    from pipeline.job.sources import Tally, skipped_note

    listing = plan.manifest["listing"]
    done = len(plan.shards) - len(plan.todo)
    lines = [
        "dry run: nothing was written and nothing labelled",
        f"input:   {plan.source}",
        f"output:  {plan.output}: {MODES[plan.mode]}",
        f"model:   {plan.model.name or plan.model.config}",
        f"images:  {plan.num_images} in {len(plan.shards)} shards of up to "
        f"{plan.job.runtime.shard_size}",
        f"to do:   {len(plan.todo)} shard(s), {sum(s.size for s in plan.todo)} images; "
        f"{done} shard(s) already committed",
    ]
    if plan.mode == "append":
        lines.append(f"append:  {plan.added[0]} new image(s) in {plan.added[1]} new shard(s)")
    removed = listing.get("removed") or {"count": 0}
    if removed["count"]:
        lines.append(
            f"removed: {removed['count']} image(s) of the run no longer listed (e.g. "
            f"{removed['examples'][0]}); their rows stay"
        )
    skipped = listing.get("skipped") or {}
    note = skipped_note({kind: Tally(**tally) for kind, tally in skipped.items()})
    if note:
        lines.append(f"skipped: {note}")
    prompts = plan.manifest.get("prompts")
    if prompts:
        line = f"prompts: {prompts['matched']} matched to input images, {prompts['unmatched']} not"
        if prompts["unmatched"]:
            line += f" (e.g. {prompts['unmatched_examples'][0]})"
        lines.append(line)
        if prompts.get("names_file"):
            lines.append(f"classes: names from {prompts['names_file']}")
    if not plan.weights_checked:
        lines.append(
            f"weights: {plan.checkpoint} is reachable, not fetched (the run downloads it and "
            "checks it against the config before it starts)"
        )
    if plan.expired_lease:
        lines.append(f"lease:   the run would take over the expired lease of {plan.expired_lease}")
    return lines


def say_state(note: str | None) -> None:
    """Tell the user, on stderr, that the run is unfinished (``interrupted: 3 of 6 …``)."""
    if note:
        print(f"note: the run is {note}", file=sys.stderr)


def config_command(args: argparse.Namespace) -> int:
    """``autolabel config``: print the resolved config."""
    from omegaconf import OmegaConf

    from pipeline.core.config import as_dictconfig

    job = load_config(args.config, config_overrides(args))
    print(OmegaConf.to_yaml(as_dictconfig(job)), end="")
    return 0


def random_checkpoint_command(args: argparse.Namespace) -> int:
    """``autolabel random-checkpoint``: random weights in the official layout."""
    from pipeline.model.registry import resolve_model, save_random_checkpoint

    spec = resolve_model(None, args.model_config, None)
    print(save_random_checkpoint(spec.config, args.out, seed=args.seed))
    return 0


def filter_command(args: argparse.Namespace) -> int:
    """``autolabel filter``: a new run with only the kept masks."""
    from pipeline.results.filters import filter_run

    writable_as("OUT", args.out, "folder", storage_options(args.storage_option))
    source, out = locations(args, args.run, args.out)
    counts = filter_run(
        source,
        out,
        mask_filter_from(args),
        overwrite=args.overwrite,
        pool=shard_pool(args),
        partial=args.partial,
    )
    print(
        f"kept {counts['masks']} of {counts['masks_before']} masks on {counts['ok']} images; "
        f"output: {args.out}"
    )
    return 0


def stats_command(args: argparse.Namespace) -> int:
    """``autolabel stats``: the summary table, and JSON + plots with --out."""
    from rich.console import Console

    from pipeline.results.stats import run_stats, stats_table

    writable_as("--out", args.out, "folder", storage_options(args.storage_option))
    stats = run_stats(*locations(args, args.run), args.out, pool=shard_pool(args))
    say_state(stats.state_note)
    Console().print(stats_table(stats, f"autolabel stats: {args.run}"))
    if args.out:
        print(f"wrote {args.out}/stats.json, distributions.png, survival.png")
    return 0


def export_command(args: argparse.Namespace) -> int:
    """``autolabel export``: COCO or SA-1B JSON, label-map PNGs or cut-outs."""
    from pipeline.results.export import export_coco, export_sa1b
    from pipeline.results.maps import export_cutouts, export_png

    exporter = {
        "coco": export_coco,
        "sa1b": export_sa1b,
        "png": export_png,
        "cutouts": export_cutouts,
    }[args.format]
    kind = "file" if args.format == "coco" else "folder"
    writable_as("--out", args.out, kind, storage_options(args.storage_option))
    counts = exporter(
        *locations(args, args.run, args.out),
        mask_filter_from(args),
        pool=shard_pool(args),
        partial=args.partial,
    )
    failed = counts.pop("failed", {})
    for uri, reason in failed.items():
        print(f"not cut out: {uri}: {reason}", file=sys.stderr)
    print(", ".join(f"{value} {key}" for key, value in counts.items()) + f"; output: {args.out}")
    return 1 if failed else 0


def show_command(args: argparse.Namespace) -> int:
    """``autolabel show``: overlay PNGs."""
    from pipeline.results.dataset import open_run
    from pipeline.results.overlays import show

    writable_as("--out", args.out, "folder", storage_options(args.storage_option))
    [run] = locations(args, args.run)
    say_state(open_run(run).state_note())
    done = show(run, args.out, args.image_id, args.sample, args.seed, mask_filter_from(args))
    for uri, reason in done.failed.items():
        print(f"not drawn: {uri}: {reason}", file=sys.stderr)
    print(f"wrote {len(done.written)} overlays to {args.out}")
    return 1 if done.failed and not done.written else 0


def eval_command(args: argparse.Namespace) -> int:
    """``autolabel eval``: COCO metrics table, and JSON + plot with --out."""
    from rich.console import Console

    from pipeline.results.evaluate import evaluate_run, metrics_caption, metrics_table

    writable_as("--out", args.out, "folder", storage_options(args.storage_option))
    report = evaluate_run(*locations(args, args.run), args.gt, args.out)
    Console().print(metrics_table(report))
    print(metrics_caption(report))
    if args.out:
        print(f"wrote {args.out}/eval.json, thresholds.png")
    return 0


def compare_command(args: argparse.Namespace) -> int:
    """``autolabel compare``: two runs matched mask by mask; JSON, table and plot with --out."""
    from rich.console import Console

    from pipeline.results.compare import compare_runs, comparison_table
    from pipeline.results.dataset import open_run

    writable_as("--out", args.out, "folder", storage_options(args.storage_option))
    a, b = locations(args, args.a, args.b)
    for name, run in (("A", a), ("B", b)):
        note = open_run(run).state_note()
        if note:
            print(
                f"warning: run {name} is {note}: images of its missing shards count as "
                "only in the other run",
                file=sys.stderr,
            )
    comparison = compare_runs(a, b, args.iou, args.out, pool=shard_pool(args))
    Console().print(comparison_table(comparison, f"autolabel compare: A={args.a} B={args.b}"))
    if args.out:
        print(f"wrote {args.out}/compare.json, images.parquet, iou.png")
    return 0


def view_command(args: argparse.Namespace) -> int:
    """``autolabel view``: the run browser page, until Ctrl-C."""
    from pipeline.core.executor import ShardPool
    from pipeline.web.browse import RunBrowser
    from pipeline.web.comparing import RunComparer
    from pipeline.web.server import serve, view_app

    if args.iou is not None and not args.compare:
        raise UserError("--iou is for --compare B: give the second run, or leave --iou out")
    [run] = locations(args, args.run)
    browser = RunBrowser(run, storage_flags=args.storage_option)
    say_state(browser.run.state_note())
    comparer = None
    if args.compare:
        [other] = locations(args, args.compare)
        pool = ShardPool(show_progress=sys.stderr.isatty())
        comparer = RunComparer(browser, other, 0.5 if args.iou is None else args.iou, pool)
        note = comparer.b.run.state_note()
        if note:
            print(f"note: run B is {note}", file=sys.stderr)
        what = f"autolabel view of {run} compared with {other}"
    else:
        what = f"autolabel view of {run}"
    serve(view_app(browser, comparer), args.host, args.port, what)
    return 0


def tune_command(args: argparse.Namespace) -> int:
    """``autolabel tune``: the settings page over a few images, until Ctrl-C."""
    from pipeline.web.server import serve, tune_app
    from pipeline.web.tuning import Tuner

    overrides = config_overrides(args)
    job = load_config(args.config, overrides)  # a bad setting fails before the server
    source = open_location(args.input, job.storage.options)
    tuner = Tuner(source, args.config, overrides, sample=args.sample)
    serve(tune_app(tuner), args.host, args.port, f"autolabel tune on {len(tuner.uris)} images")
    return 0


def synth_command(args: argparse.Namespace) -> int:
    """``autolabel synth``: synthetic scenes and their ground truth."""
    from pipeline.synthetic.scenes import write_dataset

    options = storage_options(args.storage_option)
    writable_as("--out", args.out, "folder", options)
    counts = write_dataset(args.out, args.n, args.seed, args.size, args.difficulty, options)
    print(f"wrote {counts['images']} scenes with {counts['annotations']} instances to {args.out}")
    return 0


COMMANDS = {
    "eval": eval_command,
    "compare": compare_command,
    "synth": synth_command,
    "view": view_command,
    "tune": tune_command,
    "run": run_command,
    "filter": filter_command,
    "stats": stats_command,
    "export": export_command,
    "show": show_command,
    "config": config_command,
    "random-checkpoint": random_checkpoint_command,
}

if __name__ == "__main__":
    sys.exit(main())
