"""`gx provision`: the provisioning process (obligations <-> provider agents <-> engine).

The process lives in `streams/provisioning.py`; this module only puts it under `gx`.
"""

from __future__ import annotations

import argparse

from streams import provisioning

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `provision`."""
    parser = subparsers.add_parser(
        "provision", help="send provisioning requests to providers and their outcomes to the engine"
    )
    provisioning.add_arguments(parser)
    parser.set_defaults(handler=provisioning.run_from_args)
