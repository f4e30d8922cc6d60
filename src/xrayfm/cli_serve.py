"""``xrayfm serve``: the HTTP API and web page of a fine-tuned model."""

from __future__ import annotations

import argparse
import os

from xrayfm.errors import XrayfmError


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ModuleNotFoundError:
        raise XrayfmError("serving needs the server packages: pip install 'xrayfm[serve]'") from None
    from xrayfm.serve.app import create_app

    token = args.token or os.environ.get("XRAYFM_TOKEN") or None
    app = create_app(args.model, token=token, max_upload_mb=args.max_upload_mb, max_batch=args.max_batch,
                     max_wait_ms=args.max_wait_ms, queue_size=args.queue_size, device=args.device)  # fmt: skip
    print(f"serving {args.model} on http://{args.host}:{args.port}/  (API docs: /docs; Ctrl-C stops)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def add_serve_command(sub: argparse._SubParsersAction) -> None:
    """Register ``serve`` on the top-level subparsers."""
    p = sub.add_parser(
        "serve",
        help="HTTP API (/predict, /segment, /detect) and web page of a fine-tuned model",
        description=(
            "Serve a fine-tuned model: POST /predict, /segment, /detect (multipart image or DICOM), "
            "GET /health, /model, the OpenAPI schema at /openapi.json and a web page at /. "
            "Concurrent requests are batched; a full queue answers 503."
        ),
    )
    p.add_argument("model", help="finetune run folder or model folder")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--token", help="require Authorization: Bearer TOKEN (or set XRAYFM_TOKEN)")
    p.add_argument("--max-upload-mb", type=float, default=32.0, help="largest upload (default 32 MB)")
    p.add_argument("--max-batch", type=int, default=8, help="most images per forward pass (default 8)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="batching wait (default 5 ms)")
    p.add_argument("--queue-size", type=int, default=64, help="most waiting requests before 503 (default 64)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.set_defaults(func=cmd_serve)
