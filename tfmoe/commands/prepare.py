"""``tfmoe prepare``: turn interaction logs into a prepared dataset (TFRecords + vocabularies).

Runs :func:`tfmoe.data.prepare.prepare` on Apache Beam and prints the summary. Progress goes to
stderr (a live line on terminals, stage lines only otherwise); the summary goes to stdout.
Arguments after ``--`` are passed to Beam unchanged (e.g. Dataflow's ``--project``).

Exit codes: 0 done, 1 bad input rows (with ``--on-error error``), 2 bad arguments or paths.

Example:
    $ tfmoe prepare --format ml1m-sasrec --input ../shared/data/ml-1m/ml-1m.txt --out /tmp/ml1m-prepared
    $ tfmoe prepare --format taobao --input UserBehavior.csv --out /tmp/taobao --on-error skip --kcore 5
    $ tfmoe prepare --format csv --input 'logs/*.csv' --out /tmp/p --columns user=uid,item=sku,timestamp=ts \\
          --runner DataflowRunner -- --project=my-project --region=europe-west1 --temp_location=gs://b/tmp
"""

from __future__ import annotations

import argparse
import json
import os
import sys

_ERROR_TYPES = (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, LookupError)


def register(subparsers) -> None:
    from tfmoe.data.readers import FORMAT_NAMES
    from tfmoe.data.sessions import DEFAULT_CHUNK_SIZE, DEFAULT_GAP_SECONDS, SESSION_MODES

    parser = subparsers.add_parser(
        "prepare",
        help="prepare interaction logs: validate, k-core, vocabularies, sessions, leave-one-out TFRecords",
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    io_group = parser.add_argument_group("input and output")
    io_group.add_argument("--format", required=True, choices=FORMAT_NAMES, metavar="FORMAT",
                          help=f"input format: {', '.join(FORMAT_NAMES)}")
    io_group.add_argument("--input", required=True, action="extend", nargs="+", metavar="PATH",
                          help="input file(s) or glob pattern(s), read in the given order")
    io_group.add_argument("--out", required=True, help="output directory (replaced atomically)")
    io_group.add_argument("--num-shards", type=int, default=0, help="files per split (0 = one per 128 MiB of input)")

    reader = parser.add_argument_group("reader options")
    reader.add_argument("--min-rating", "--min-label", dest="min_label", type=float, default=None,
                        help="drop (and count) rows whose rating/label is below this")
    reader.add_argument("--columns", default=None, metavar="FIELD=COLUMN,...",
                        help="csv/parquet: user=..,item=..,timestamp=..,category=..,behavior=..,label=.. "
                             "(column names, or 0-based indices with --no-header; 'none' removes a field)")
    reader.add_argument("--delimiter", default=None, help="csv: field delimiter (default ',')")
    reader.add_argument("--no-header", action="store_true", help="csv: the files have no header line")
    reader.add_argument("--id-type", choices=("int", "str"), default=None, help="csv/parquet: id type (default int)")
    reader.add_argument("--behavior-map", default=None, metavar="NAME=CODE,...",
                        help="csv/parquet: map behavior names to codes >= 1, e.g. pv=1,cart=2,fav=3,buy=4")
    reader.add_argument("--max-line-bytes", type=int, default=None, help="longer lines are bad rows (line_too_long)")

    job = parser.add_argument_group("preparation")
    job.add_argument("--on-error", choices=("error", "skip"), default="error",
                     help="bad rows: fail listing them (default) or drop and count them")
    job.add_argument("--max-examples", type=int, default=5, help="bad rows shown per reason (default 5)")
    job.add_argument("--session-mode", choices=SESSION_MODES, default="auto",
                     help="auto: time gap with timestamps, fixed chunks without")
    job.add_argument("--session-gap-seconds", type=int, default=DEFAULT_GAP_SECONDS,
                     help=f"a longer gap starts a new session (default {DEFAULT_GAP_SECONDS})")
    job.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE,
                     help=f"items per session without timestamps (default {DEFAULT_CHUNK_SIZE})")
    job.add_argument("--kcore", type=int, default=None, metavar="K", help="k-core: both minimums at once")
    job.add_argument("--kcore-users", type=int, default=0, help="k-core: minimum interactions per user")
    job.add_argument("--kcore-items", type=int, default=0, help="k-core: minimum interactions per item")
    job.add_argument("--kcore-max-rounds", type=int, default=20, help="k-core: rounds before giving up")
    job.add_argument("--max-sequence-length", type=int, default=0,
                     help="keep each user's most recent N interactions (0 = all)")
    job.add_argument("--split-mb", type=int, default=64, help="input MiB per parallel read task (default 64)")

    run_group = parser.add_argument_group("running")
    run_group.add_argument("--runner", default="DirectRunner", help="Beam runner (default DirectRunner)")
    run_group.add_argument("--progress", choices=("auto", "live", "plain", "off"), default="auto",
                           help="auto: a live line on terminals, stage lines otherwise")
    run_group.add_argument("--json", action="store_true", help="print the whole summary as JSON")
    run_group.add_argument("--verbose", action="store_true", help="keep Beam's and TensorFlow's log output")
    parser.add_argument("beam_args", nargs=argparse.REMAINDER,
                        help="after '--': options passed to Beam unchanged (--key=value)")
    parser.set_defaults(func=run)


def _pairs(text: str, flag: str) -> dict:
    pairs = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{flag}: expected NAME=VALUE pairs separated by commas, got {part!r}")
        pairs[key.strip()] = value.strip()
    return pairs


def _columns(text: str, by_index: bool) -> dict:
    from tfmoe.data.readers import ColumnSpec

    known = ColumnSpec.__dataclass_fields__
    columns = {}
    for name, value in _pairs(text, "--columns").items():
        if name not in known:
            raise ValueError(f"--columns: unknown field {name!r}; fields are {', '.join(known)}")
        if value.lower() in ("", "none"):
            columns[name] = None
        elif by_index:
            if not value.isdigit():
                raise ValueError(f"--columns: with --no-header, {name} must be a 0-based column index, got {value!r}")
            columns[name] = int(value)
        else:
            columns[name] = value
    return columns


def reader_options_from_args(args) -> dict:
    """The ``reader_options`` of :class:`~tfmoe.data.prepare.PrepareConfig` named by the flags."""
    from tfmoe.data.readers import canonical_format

    options = {}
    if args.min_label is not None:
        movielens = canonical_format(args.format) in ("movielens-ratings", "movielens-csv")
        options["min_rating" if movielens else "min_label"] = args.min_label
    if args.columns is not None:
        options["columns"] = _columns(args.columns, by_index=args.no_header)
    if args.delimiter is not None:
        options["delimiter"] = "\t" if args.delimiter in ("\\t", "tab") else args.delimiter
    if args.no_header:
        options["header"] = False
    if args.id_type is not None:
        options["id_type"] = args.id_type
    if args.behavior_map is not None:
        codes = _pairs(args.behavior_map, "--behavior-map")
        bad = [name for name, code in codes.items() if not code.isdigit()]
        if bad:
            raise ValueError(f"--behavior-map: codes must be integers >= 1; {', '.join(bad)} are not")
        options["behavior_map"] = {name: int(code) for name, code in codes.items()}
    if args.max_line_bytes is not None:
        options["max_line_bytes"] = args.max_line_bytes
    return options


def config_from_args(args):
    """The :class:`~tfmoe.data.prepare.PrepareConfig` named by the parsed arguments."""
    from tfmoe.data.prepare import PrepareConfig

    beam_args = list(args.beam_args)
    if beam_args[:1] == ["--"]:
        beam_args = beam_args[1:]
    kcore_users = args.kcore if args.kcore is not None else args.kcore_users
    kcore_items = args.kcore if args.kcore is not None else args.kcore_items
    return PrepareConfig(
        format=args.format,
        inputs=tuple(args.input),
        output_dir=args.out,
        reader_options=reader_options_from_args(args),
        on_error=args.on_error,
        max_examples=args.max_examples,
        num_shards=args.num_shards,
        session_mode=args.session_mode,
        session_gap_seconds=args.session_gap_seconds,
        chunk_size=args.chunk_size,
        kcore_users=kcore_users,
        kcore_items=kcore_items,
        kcore_max_rounds=args.kcore_max_rounds,
        max_sequence_length=args.max_sequence_length,
        split_bytes=args.split_mb << 20,
        runner=args.runner,
        pipeline_args=tuple(beam_args),
    )


def _quiet_libraries() -> None:
    import logging
    import warnings

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("absl").setLevel(logging.ERROR)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    from tfmoe.data.prepare import quiet_beam_logs

    quiet_beam_logs()


def _distribution(name: str, summary: dict) -> str:
    if not summary.get("count"):
        return f"  {name}: none"
    return (f"  {name}: min {summary['min']:,}, p50 {summary['p50']:,g}, mean {summary['mean']:,.1f}, "
            f"p90 {summary['p90']:,g}, p99 {summary['p99']:,g}, max {summary['max']:,}")


def _by_reason(counts: dict) -> str:
    return ", ".join(f"{reason} {n:,}" for reason, n in counts.items()) or "none"


def format_summary(summary: dict, out: str) -> str:
    """The human-readable end-of-run summary."""
    counts, dropped, sessions = summary["counts"], summary["dropped"], summary["sessions"]
    session_rule = (f"gap > {sessions['gap_seconds']:,}s" if sessions["mode"] == "gap"
                    else f"chunks of {sessions['chunk_size']}")
    records = ", ".join(f"{split} {info['records']:,}" for split, info in summary["splits"].items())
    lines = [
        f"prepared {out} in {summary['elapsed_seconds']['total']:.1f}s",
        f"  users {counts['users']:,} | items {counts['items']:,} | interactions {counts['interactions']:,}"
        f" | categories {counts['categories']:,}",
        _distribution("sequence length", summary["sequence_length"]),
        _distribution(f"sessions per user ({session_rule})", summary["sessions_per_user"]),
        f"  records: {records} ({summary['num_shards']} shard(s) per split)",
        f"  rows read {summary['input']['rows_read']:,}; rejected: {_by_reason(dropped['rows'])}",
        f"  users dropped: {_by_reason(dropped['users'])}; interactions dropped: {_by_reason(dropped['interactions'])}",
    ]
    if summary.get("kcore"):
        kcore = summary["kcore"]
        lines.append(f"  k-core users>={kcore['min_user_interactions']} items>={kcore['min_item_interactions']}: "
                     f"converged after {kcore['rounds_with_removals']} round(s) with removals")
    examples = summary["bad_rows"]["examples"]
    for reason, rows in examples.items():
        for row in rows[:3]:
            lines.append(f"    {reason}: {row['file']}:{row['line']}: {row['detail']}: {row['text']!r}")
    lines.append(f"  details: {os.path.join(out, 'summary.json')}")
    return "\n".join(lines)


def run(args) -> int:
    from tfmoe.data.progress import Progress

    if not args.verbose:
        _quiet_libraries()
    try:
        config = config_from_args(args)
    except _ERROR_TYPES as error:
        print(f"tfmoe prepare: {error}", file=sys.stderr)
        return 2
    from tfmoe.data.prepare import prepare
    from tfmoe.data.report import InputError

    live = {"auto": None, "live": True, "plain": False, "off": False}[args.progress]
    progress = Progress(stream=sys.stderr, live=live, enabled=args.progress != "off")
    try:
        summary = prepare(config, progress)
    except InputError as error:
        print(f"tfmoe prepare: bad input, nothing written.\n{error}", file=sys.stderr)
        return 1
    except _ERROR_TYPES as error:
        print(f"tfmoe prepare: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_summary(summary, config.output_dir))
    return 0
