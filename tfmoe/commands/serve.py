"""``tfmoe serve``: the local model server (gRPC, TF Serving's API) for exported model versions.

A stand-in for the real ``tensorflow_model_server``, which cannot be installed everywhere: the
same flags, the same ``models.config`` / ``batching.config`` files, the same gRPC services and
status codes (see :mod:`tfmoe.serving.model_server`). ``--print_real_server_command`` prints the
equivalent ``tensorflow_model_server`` command line instead of serving.

Example:
    $ tfmoe serve --model_config_file=/srv/models/models.config --port=8500
    $ tfmoe serve --model_name=recs --model_base_path=/srv/models/recs
    $ tfmoe serve --model_config_file=/srv/models/models.config --print_real_server_command
"""

from __future__ import annotations

import argparse
import math


def register(subparsers) -> None:
    help_text = "serve exported models over gRPC (local stand-in for tensorflow_model_server)"
    try:
        from tfmoe.serving import server_cli  # stdlib only: keeps `tfmoe --help` fast
    except ImportError as err:  # an install without the serving package must not break the other commands
        reason = str(err)
        parser = subparsers.add_parser("serve", help=help_text, prefix_chars="+", add_help=False)
        parser.add_argument("ignored", nargs="*")  # any flags: the command only explains what is missing
        parser.set_defaults(func=lambda args: _unavailable(reason))
        return
    parser = subparsers.add_parser("serve", help=help_text, description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    server_cli.add_arguments(parser)
    parser.add_argument("--print_real_server_command", action="store_true",
                        help="print the equivalent tensorflow_model_server command line and exit")
    parser.set_defaults(func=run)


def _unavailable(reason: str) -> int:
    print(f"tfmoe serve: tfmoe.serving cannot be imported ({reason}); install the serving extra: "
          "pip install 'tfmoe[serving]'")
    return 2


def real_server_command(args) -> list[str]:
    """The ``tensorflow_model_server`` argv equivalent to these local-server ``args``."""
    from tfmoe.serving import config

    if not args.model_config_file:
        raise ValueError("--print_real_server_command needs --model_config_file")
    files = config.ServerFiles(
        model_config_file=args.model_config_file,
        batching_parameters_file=args.batching_parameters_file if args.enable_batching else None,
        monitoring_config_file=args.monitoring_config_file or None,
        host_dir="")
    return config.server_command(
        files, grpc_port=args.port, rest_api_port=args.rest_api_port or config.REST_API_PORT,
        file_system_poll_wait_seconds=math.ceil(args.file_system_poll_wait_seconds),
        model_config_file_poll_wait_seconds=math.ceil(args.model_config_file_poll_wait_seconds),
        enable_model_warmup=args.enable_model_warmup,
        allow_version_labels_for_unavailable_models=args.allow_version_labels_for_unavailable_models,
        grpc_channel_arguments=args.grpc_channel_arguments,
        tensorflow_intra_op_parallelism=args.tensorflow_intra_op_parallelism,
        tensorflow_inter_op_parallelism=args.tensorflow_inter_op_parallelism)


def run(args) -> int:
    if args.print_real_server_command:
        from tfmoe.serving import config

        try:
            print(config.shell_line(real_server_command(args)))
        except ValueError as err:
            print(f"tfmoe serve: {err}")
            return 2
        return 0
    from tfmoe.serving import server_cli

    return server_cli.run(args)
