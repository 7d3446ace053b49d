"""`nnfp serve`: identify, monitor and catalogue changes over HTTP."""

import os
import sys

from nnfp.cli.exit_codes import BAD_INPUT

__all__ = ["cmd_serve"]


def cmd_serve(args):
    try:
        from nnfp.serve import Catalogue, create_app, serve
    except ImportError as error:
        print(f"nnfp serve: error: {error}", file=sys.stderr)
        return BAD_INPUT
    token = args.token or os.environ.get("NNFP_TOKEN") or None
    app = create_app(Catalogue(args.index_dir, runtime=args.runtime), token=token, max_upload_mb=args.max_upload_mb)
    return serve(
        app, host=args.host, port=args.port,
        on_ready=lambda url: print(f"serving {args.index_dir} on {url}", flush=True),
    )
