"""Deployment commands: ``xrayfm serve`` (HTTP API and web page) and ``xrayfm export onnx``."""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from xrayfm.cli.args import add_model_arg
from xrayfm.errors import XrayfmError
from xrayfm.models.precision import DEFAULT_TOLERANCE, PRECISIONS

KEEP_ALIVE_S = 5
GRACEFUL_SHUTDOWN_S = 10


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from xrayfm.serve.http_protocol import BoundedHttpToolsProtocol
    except ModuleNotFoundError:
        raise XrayfmError("serving needs the server packages: pip install 'xrayfm[serve]'") from None
    from xrayfm.pretrain.multitask_serving import WEIGHTS, load_served_multitask, multitask_folder
    from xrayfm.serve.app import create_app

    token = args.token or os.environ.get("XRAYFM_TOKEN") or None
    model, loaded = args.model, None
    multitask = multitask_folder(args.model)
    if multitask is None and args.weights is not None:
        raise XrayfmError(f"--weights picks a Foundation X model's teacher or student; {args.model} is not one")
    if multitask is not None:
        if args.backend != "torch":
            raise XrayfmError(f"{multitask} is a Foundation X multi-task model, which has no ONNX export; "
                              "serve it with --backend torch")  # fmt: skip
        # loaded on a thread that ends, as create_app loads a model: torch ops on the main thread would leave
        # OpenMP workers there that slow every forward pass on the model thread (see serve/batcher.py)
        with ThreadPoolExecutor(1) as pool:
            loaded = pool.submit(load_served_multitask, multitask, weights=args.weights or WEIGHTS[0]).result()
        model = multitask
    app = create_app(model, loaded=loaded, token=token, max_upload_mb=args.max_upload_mb, max_batch=args.max_batch,
                     max_wait_ms=args.max_wait_ms, queue_size=args.queue_size, device=args.device,
                     backend=args.backend, precision=args.precision, max_decodes=args.max_decodes,
                     max_pixels_in_flight=int(args.max_megapixels_in_flight * 1e6), body_timeout=args.body_timeout,
                     body_idle_timeout=args.body_idle_timeout, decode_timeout=args.decode_timeout,
                     lanes=args.lanes, torch_compile=args.compile)  # fmt: skip
    print(f"serving {args.model} ({args.backend}, {args.precision}) on http://{args.host}:{args.port}/  "
          "(API docs: /docs; Ctrl-C stops)")  # fmt: skip
    # httptools with request heads of at most 16 KiB (serve/http_protocol.py), a bounded number of
    # connections (503 beyond), idle keep-alive connections closed after 5 s
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", http=BoundedHttpToolsProtocol,
                limit_concurrency=args.max_connections, timeout_keep_alive=KEEP_ALIVE_S, server_header=False,
                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)  # fmt: skip
    return 0


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="HTTP API (/predict, /segment, /detect) and web page of a fine-tuned or Foundation X model",
        description=(
            "Serve a fine-tuned model, or a Foundation X model (xrayfm pretrain multitask: every dataset/task head "
            "from one backbone): POST /predict, /segment, /detect (multipart image or DICOM), "
            "GET /health, /model, the OpenAPI schema at /openapi.json and a web page at /. "
            "Concurrent requests are batched; a full queue answers 503. Uploads are refused as their bytes arrive "
            "(token, size, time) and decoded within a bounded number of decodes and pixels."
        ),
    )
    add_model_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--token", help="require Authorization: Bearer TOKEN (or set XRAYFM_TOKEN)")
    p.add_argument("--max-upload-mb", type=float, default=32.0, help="largest upload (default 32 MB)")
    p.add_argument("--max-batch", type=int, default=8, help="most images per forward pass (default 8)")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="longest a request waits for others to batch with, and only while other uploads are "
                   "decoding (default 5 ms)")  # fmt: skip
    p.add_argument("--lanes", type=int, default=None,
                   help="most batches run at once under load, each on its share of the threads; a lone request "
                        "gets them all (default: 2 on a CPU, 1 on a GPU)")  # fmt: skip
    p.add_argument("--compile", action="store_true",
                   help="run plain forward passes through torch.compile (torch backend), compiled before the "
                        "server answers (tens of seconds; a C++ compiler on a CPU)")  # fmt: skip
    p.add_argument("--queue-size", type=int, default=64,
                   help="most uploads admitted beyond those decoding, and most waiting for the model; more get 503 "
                        "(default 64)")  # fmt: skip
    p.add_argument(
        "--max-decodes",
        type=int,
        default=None,
        help="most uploads decoded at once (default: the CPUs the server may use)",
    )
    p.add_argument("--max-megapixels-in-flight", type=float, default=200.0,
                   help="most declared megapixels decoded at once; an upload waits up to 10 s for room, then gets 503 "
                        "(default 200: two images at the 100 MP read limit)")  # fmt: skip
    p.add_argument(
        "--body-timeout",
        type=float,
        default=30.0,
        help="seconds an upload's body may take to arrive, else 408 (default 30)",
    )
    p.add_argument(
        "--body-idle-timeout",
        type=float,
        default=10.0,
        help="seconds allowed between two chunks of a body, else 408 (default 10)",
    )
    p.add_argument("--decode-timeout", type=float, default=30.0,
                   help="seconds a DICOM upload's decoding may take (in a child process, stopped beyond them), "
                        "else 400 (default 30)")  # fmt: skip
    p.add_argument(
        "--max-connections",
        type=int,
        default=256,
        help="most open connections and requests; beyond them the server answers 503 (default 256)",
    )
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--weights", choices=["teacher", "student"], default=None,
                   help="a Foundation X model (xrayfm pretrain multitask OUT): serve its EMA teacher (default: "
                        "the student averaged over the cycle, not tilted to the head trained last) or its "
                        "student")  # fmt: skip
    p.add_argument("--backend", choices=["torch", "onnx"], default="torch",
                   help="run inference with PyTorch or with ONNX Runtime on model.onnx (xrayfm export onnx); "
                        "heatmaps always use PyTorch")  # fmt: skip
    p.add_argument("--precision", choices=list(PRECISIONS), default="fp32",
                   help="fp32; bf16 (torch backend, autocast; needs AVX-512-BF16/AMX or a bf16 GPU); int8 (onnx "
                        "backend, from xrayfm export onnx --precision int8). Heatmaps stay fp32")  # fmt: skip
    p.set_defaults(func=cmd_serve)


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from xrayfm.evaluate.precision_check import export_checked
    from xrayfm.models.onnx_model import ONNX_FILE
    from xrayfm.models.task_checkpoint import find_task_model

    options = {"opset": args.opset, "atol": args.atol, "rtol": args.rtol}
    if args.precision == "int8":
        options["calibration_images"] = args.calibration_images
    info = export_checked(args.model, args.out, precision=args.precision, check_data=args.check_data,
                          tolerance=args.tolerance, force=args.force, **options)  # fmt: skip
    out = Path(args.out) if args.out else find_task_model(args.model)
    check = info["check"]
    worst: dict[str, float] = {}  # per task: a detection head has several graph outputs ("task.part.level")
    for name, value in check["max_abs_diff"].items():
        task = name.split(".")[0]
        worst[task] = max(worst.get(task, 0.0), value)
    diffs = ", ".join(f"{k} {v:.2g}" for k, v in worst.items())
    print(f"wrote {out / ONNX_FILE} (opset {info['opset']}, input (N, 1, {info['input_size']}, "
          f"{info['input_size']}) grey [0, 1])")  # fmt: skip
    print(f"checked with ONNX Runtime at batch sizes {check['batches']}: largest difference from PyTorch {diffs}")
    backend = "torch" if args.precision == "bf16" else "onnx"
    for name, rec in info.get("precisions", {}).items():
        changes = ", ".join(f"{t} {r['metric']} {_num(r['fp32'])} -> {_num(r[name])}"
                            for t, r in rec["check"]["tasks"].items())  # fmt: skip
        made = f"{rec['file']} ({rec['method']})" if rec.get("file") else rec["runtime"]
        data = rec["check"]["data"]
        verdict = "within" if rec["check"]["passed"] else "BEYOND (--force)"
        print(f"{name}: {made}; on {data['images']} {data['dataset']} {data['split']} images {changes}, "
              f"{verdict} tolerance {rec['check']['tolerance']:g}")  # fmt: skip
    print(f"serve it: xrayfm serve {out} --backend {backend} --precision {args.precision}")
    return 0


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a fine-tuned model for deployment (ONNX)")
    fmt = p.add_subparsers(dest="format", required=True, metavar="FORMAT")
    o = fmt.add_parser(
        "onnx",
        help="a fine-tuned model to model.onnx (fp32, or also int8), checked against PyTorch with ONNX Runtime",
        description=(
            "Export a fine-tuned model to model.onnx (dynamic batch, the training image size, preprocessing inside "
            "the graph; box detection as its dense part, its box logic staying in PyTorch) and check every output "
            "against PyTorch with ONNX Runtime. Writes model.onnx (and model.int8.onnx with --precision int8) and "
            "onnx.json into the model folder, or into --out together with copies of the model, so the folder can be "
            "served with --backend onnx."
        ),
    )
    o.add_argument("model", help="finetune run folder or model folder")
    o.add_argument("--out", help="destination folder (default: the model folder)")
    o.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    o.add_argument("--atol", type=float, default=1e-4, help="absolute tolerance of the check (default 1e-4)")
    o.add_argument("--rtol", type=float, default=1e-3, help="relative tolerance of the check (default 1e-3)")
    o.add_argument("--precision", choices=list(PRECISIONS), default="fp32",
                   help="int8: also write model.int8.onnx (ONNX Runtime static quantization calibrated on the "
                        "model's training images, dynamic where they cannot be read); bf16: certify PyTorch bf16 "
                        "autocast. Either is scored against fp32 on held-out images (default fp32)")  # fmt: skip
    o.add_argument("--check-data", metavar="ADAPTER:ROOT",
                   help="held-out images for the precision check instead of the model's own test / val split "
                        "(needed where that cannot be read)")  # fmt: skip
    o.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help="largest AUROC / Dice / box mAP@0.5 change accepted at reduced precision "
                        "(default 0.005)")  # fmt: skip
    o.add_argument("--force", action="store_true", help="write a reduced precision beyond --tolerance (warns)")
    o.add_argument("--calibration-images", type=int, default=64,
                   help="training images calibrating int8 (default 64)")  # fmt: skip
    o.set_defaults(func=cmd_export_onnx)


def add_deploy_commands(sub: argparse._SubParsersAction) -> None:
    """Register serve and export (with its format onnx) on the top-level subparsers.

    Args:
        sub: The ``xrayfm`` subparsers.
    """
    _add_serve(sub)
    _add_export(sub)
