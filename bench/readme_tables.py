"""README result tables, generated from the benchmark JSON in ``bench/results``.

Usage: python bench/readme_tables.py [--check] [--readme README.md] [--results bench/results]

Every block between ``<!-- bench:NAME:start -->`` and ``<!-- bench:NAME:end -->`` in the README
is rewritten from ``bench/results/STEM.json``, where NAME is ``STEM`` or ``STEM:PART``; the text
around the blocks is left alone. Each block says where its numbers come from: the provenance the
result records (``bench/provenance.py``), or, for files written before it existed, the machine
fields as recorded and what is not recorded. ``--check`` rewrites nothing and exits with status 1
when the README differs from what the JSON gives (a test runs it, so the two cannot drift).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from xrayfm.finetune.sweep import differences_table, markdown_table
from xrayfm.io.atomic import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(
    r"(?P<head><!-- bench:(?P<name>[\w:]+):start -->\n)(?P<body>.*?)(?P<tail>^[ \t]*<!-- bench:(?P=name):end -->)",
    re.DOTALL | re.MULTILINE,
)
ARCH_LABELS = {"eva_x_tiny_patch16": "Ti", "eva_x_small_patch16": "S"}
# The serving rows the README shows (model, backend, heatmap, clients), in its order.
SERVE_ROWS = [
    *(("Ti", backend, "fp32", False, c) for backend in ("torch", "onnx") for c in (1, 4, 16)),
    ("Ti", "torch", "fp32", True, 1), ("Ti", "torch", "fp32", True, 16), ("Ti", "onnx", "fp32", True, 16),
    ("S", "torch", "fp32", False, 1), ("S", "torch", "fp32", False, 16), ("S", "onnx", "fp32", False, 1),
    ("S", "onnx", "fp32", False, 16), ("S", "torch", "fp32", True, 16),
    *((arch, backend, precision, False, c) for arch in ("Ti", "S")
      for backend, precision in (("torch", "bf16"), ("onnx", "int8")) for c in (1, 16)),
]  # fmt: skip
#: bench/loader_throughput.py's reads per size, in the table's order, and their labels.
LOADER_READS = {"raw_png": "raw PNG files", "shards_png": "shards, PNG", "shards_raw": "shards, raw pixels"}


def half_up(x: float, digits: int = 0) -> Decimal:
    """``x`` rounded half away from zero at ``digits`` decimals (negative: tens, hundreds...), as
    read in decimal: 6.25 -> 6.3, unlike ``round``'s binary, half-to-even result."""
    return Decimal(str(x)).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)


def rate(x: float) -> str:
    """A throughput as the README writes it: one decimal below 10, whole numbers up to 1,000,
    three significant digits above (1,082.3 -> 1,080)."""
    if x < 10:
        return str(half_up(x, 1))
    whole = int(half_up(x))
    if whole >= 1000:
        whole = int(half_up(whole, 3 - len(str(whole))))
    return f"{whole:,}"


def wrap(text: str, indent: str = "") -> str:
    """``text`` as lines of at most 100 characters (words never split), each starting with ``indent``."""
    return textwrap.fill(text, 100, initial_indent=indent, subsequent_indent=indent, break_long_words=False,
                         break_on_hyphens=False) + "\n"  # fmt: skip


def _command(argv: list[str]) -> str:
    """The recorded command line, its script path relative to the repository when inside it."""
    script = Path(argv[0])
    if script.is_absolute() and script.is_relative_to(REPO):
        script = script.relative_to(REPO)
    return " ".join(["python", str(script), *argv[1:]])


def _known(value: Any) -> str:
    return "unrecorded" if value is None else str(value)


def describe_provenance(prov: dict[str, Any]) -> str:
    """One sentence from a ``provenance`` record; fields it lacks read "unrecorded"."""
    git = prov.get("git") or {}
    commit = git.get("commit")
    code = f"commit {commit[:10]}" if commit else "commit unrecorded"
    if git.get("dirty"):
        code += " with uncommitted changes"
    machine = prov.get("machine") or {}
    flags = machine.get("cpu_flags")
    flag_text = "CPU flags unrecorded" if flags is None else ", ".join(f for f, on in flags.items() if on) or "no AVX2"
    software = ", ".join(f"{k} {v}" for k, v in (prov.get("software") or {}).items() if v is not None)
    command = f"`{_command(prov['command'])}`" if prov.get("command") else "command unrecorded"
    return (
        f"measured {_known(prov.get('date'))}, {code}, {command}; {_known(machine.get('cpu'))}, "
        f"{_known(machine.get('cores'))} cores ({_known(machine.get('cores_usable'))} usable; {flag_text}), "
        f"{_known(machine.get('memory_gib'))} GiB, {_known(machine.get('os'))}, GPU {machine.get('gpu') or 'none'}; "
        f"{software or 'versions unrecorded'}; {_known(prov.get('torch_threads'))} torch threads"
    )


def describe(report: dict[str, Any], source: str) -> str:
    """Where a result file's numbers come from, as the file itself records it."""
    if "provenance" in report:
        return f"Recorded in `{source}`: {describe_provenance(report['provenance'])}."
    machine = ", ".join(f"{k} {v if v is not None else 'none'}" for k, v in (report.get("machine") or {}).items())
    return f"Recorded in `{source}`; machine as recorded: {machine or 'none'}. No date, commit or command recorded."


def finetune_table(report: dict[str, Any], experiment: str) -> str:
    """The sweep table of one experiment (its only split), as ``xrayfm sweep`` writes it."""
    rows = report["experiments"][experiment]["rows"]
    splits = sorted({r["split"] for r in rows})
    if len(splits) != 1:
        raise ValueError(f"experiment {experiment} has splits {splits}; the README shows one")
    return markdown_table(rows, splits[0])


def finetune_provenance(report: dict[str, Any], source: str) -> str:
    """Provenance of the whole real-data benchmark: the run, the pretrained backbone, each experiment."""
    pre = report["pretraining"]
    seconds = "time unrecorded" if pre.get("seconds") is None else f"{pre['seconds']} s"
    if pre.get("resumed_from_checkpoint"):
        seconds += " after resuming from a checkpoint"
    parts = "; ".join(
        f"{name}: config `{part['config_hash']}`, {part['runs']} runs ({part['runs_reused']} reused), "
        f"{_known((part.get('provenance') or {}).get('date'))}"
        for name, part in report["experiments"].items()
    )
    return wrap(
        f"{describe(report, source)} Pretrained backbone `{pre['artefact']}` (as it records itself): "
        f"{pre['steps']} steps on {pre['images']} {pre['dataset']} images, {seconds}, loss "
        f"{pre['first_loss']} -> {pre['last_loss']}. Experiments: {parts}."
    )


def adam_provenance(report: dict[str, Any], source: str) -> str:
    """Provenance of the Adam real-data benchmark: the run, the pool, each pretraining, each experiment."""
    pool = report["pool"]
    held = ", ".join(f"{k} {v}" for k, v in pool["held_out_test_images"].items())
    inits = []
    for name, pre in report["pretraining"].items():
        losses = [pre] if "first_loss" in pre else pre["stages"]
        loss = ", ".join(f"{half_up(x['first_loss'], 3)} -> {half_up(x['last_loss'], 3)}" for x in losses)
        resumed = " after resuming from a checkpoint" if pre.get("resumed_from_checkpoint") else ""
        inits.append(f"{name} `{pre['artefact']}` {pre['steps']} steps x {pre['batch_size']} = {pre['images_seen']:,} "
                     f"images seen, {half_up(pre['seconds'])} s{resumed}, loss {loss}")  # fmt: skip
    parts = "; ".join(
        f"{name}: config `{part['config_hash']}`, {part['runs']} runs ({part['runs_reused']} reused), "
        f"{part['test_images']['n']} test images, {_known((part.get('provenance') or {}).get('date'))}"
        for name, part in report["experiments"].items()
    )
    return wrap(
        f"{describe(report, source)} Pool `{pool['folder']}`: {pool['train_images']:,} train and "
        f"{pool['val_images']} val images, test images held out ({held}). Pretraining (as each run records "
        f"itself): {'; '.join(inits)}. Experiments: {parts}."
    )


def serve_table(report: dict[str, Any], source: str) -> str:
    """The selected ``/predict`` rows (latency in ms; rows of a precision the machine skipped are left out), the
    ratios to the raw engine against issue 18's targets, the reduced precisions' speed against fp32, and the
    file's provenance."""
    main = report.get("upload", "multipart")  # results before body uploads sent multipart forms
    runs = {(ARCH_LABELS[r["arch"]], r["backend"], r.get("precision", "fp32"), r["heatmap"], r["clients"]): r
            for r in report["runs"] if r.get("upload", "multipart") == main}  # fmt: skip
    lines = [
        "| model | backend | precision | heatmap | clients | p50 | server p50 | p95 | p99 | requests/s | mean batch |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in (k for k in SERVE_ROWS if k in runs):
        r = runs[key]
        inside = "–" if r.get("server_ms_p50") is None else str(half_up(r["server_ms_p50"], 1))
        cells = [key[0], key[1], key[2], "yes" if key[3] else "no", str(key[4]), str(half_up(r["p50_ms"])), inside,
                 *(str(half_up(r[k])) for k in ("p95_ms", "p99_ms")),
                 str(half_up(r["requests_per_s"], 1)), str(half_up(r["mean_batch"], 1))]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| model | backend | precision | 1 client: p50 - raw bs1 (target <= 3 ms) | most clients: "
              "requests/s / raw images/s at the batch sizes formed (>= 0.9) | most clients / raw run as the lanes | "
              "heatmap, 1 client: p50 / raw fwd+bwd (<= 1.3) | heatmap, most clients (>= 0.8) |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for side in report["engine"]:
        got = {(r["heatmap"], r["clients"] == 1): r for r in side["ratios"]}

        def cell(heatmap: bool, one: bool) -> str:
            r = got.get((heatmap, one))
            if r is None:
                return "–"
            key, fmt = ("server_minus_raw_ms", "{:+.1f}") if one and not heatmap else ("ratio", "{:.2f}")
            value = fmt.format(r[key]) + (" ms" if key == "server_minus_raw_ms" else "")
            if r.get("rounds"):  # paired rounds: the range over them
                low, high = (fmt.format(f(x[key] for x in r["rounds"])) for f in (min, max))
                value += f" [{low}, {high}]"
            return f"{value} ({'met' if r['met'] else 'not met'})"

        laned = got.get((False, False), {})
        lanes = "–" if laned.get("ratio_to_raw_lanes") is None else f"{laned['ratio_to_raw_lanes']:.2f}"
        lines.append(
            f"| {ARCH_LABELS[side['arch']]} | {side['backend']} | {side.get('precision', 'fp32')} | "
            f"{cell(False, True)} | {cell(False, False)} | {lanes} | {cell(True, True)} | {cell(True, False)} |"
        )
    reduced = [side for side in report["engine"] if "speed_vs_fp32" in side]
    if reduced:
        lines += [
            "",
            "| model | precision (backend) | against | raw forward bs1 | raw forward max batch | "
            "server p50, 1 client | server requests/s, most clients |",
            "|---|---|---|---|---|---|---|",
        ]
        for side in reduced:
            speed = side["speed_vs_fp32"]
            top = next(k for k in speed if k.startswith("raw_forward_bs") and k != "raw_forward_bs1")
            most = next((k for k in speed if k.startswith("server_requests_per_s")), None)
            cells = [f"{speed[k]:.2f}x" if k in speed else "–" for k in ("raw_forward_bs1", top,
                                                                       "server_p50_1_client", most)]  # fmt: skip
            lines.append(
                f"| {ARCH_LABELS[side['arch']]} | {side['precision']} ({side['backend']}) | "
                f"{speed['against']} | " + " | ".join(cells) + " |"
            )
    lines += upload_table(report["runs"], main) + cpu_table(report["runs"], main)
    skipped = "".join(f" Skipped: {s}." for s in report.get("skipped", []))
    return "\n".join(lines) + "\n\n" + wrap(describe(report, source) + skipped)


def cpu_table(runs: list[dict[str, Any]], main: str) -> list[str]:
    """The server's CPU per request by thread role, for plain ``/predict`` at the most clients."""
    most = max((r["clients"] for r in runs), default=0)
    rows = [r for r in runs if r.get("server_cpu_ms_per_request") and r["clients"] == most and not r["heatmap"]
            and r.get("upload", "multipart") == main]  # fmt: skip
    if not rows:
        return []
    roles = ("model", "decode", "event loop", "other")
    lines = ["", f"| model | backend | precision | server CPU ms per request at {most} clients: model lanes | "
             "decoding | event loop | other | all |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        cpu = r["server_cpu_ms_per_request"]
        cells = [f"{cpu[k]:.1f}" for k in roles] + [f"{sum(cpu[k] for k in roles):.1f}"]
        lines.append(f"| {ARCH_LABELS[r['arch']]} | {r['backend']} | {r['precision']} | " + " | ".join(cells) + " |")
    return lines


def upload_table(runs: list[dict[str, Any]], main: str) -> list[str]:
    """Plain fp32 ``/predict`` with the PNG as the request body and as a multipart field, on the same server."""

    def plain(r: dict[str, Any]) -> bool:
        return r.get("precision", "fp32") == "fp32" and not r["heatmap"]

    other = {(r["arch"], r["backend"], r["clients"]): r for r in runs
             if plain(r) and r.get("upload", "multipart") != main}  # fmt: skip
    lines = ["", "| model | backend | clients | p50 body / multipart | server p50 body / multipart | "
             "requests/s body / multipart |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in runs:
        key = (r["arch"], r["backend"], r["clients"])
        if key in other and plain(r) and r.get("upload", "multipart") == main:
            body, form = (r, other[key]) if main == "body" else (other[key], r)
            cells = [f"{half_up(body[k], 1)} / {half_up(form[k], 1)}" for k in ("p50_ms", "server_ms_p50",
                                                                                "requests_per_s")]  # fmt: skip
            lines.append(f"| {ARCH_LABELS[r['arch']]} | {r['backend']} | {r['clients']} | " + " | ".join(cells) + " |")
    return lines if other else []


def http_parsers_table(report: dict[str, Any], source: str) -> str:
    """Per HTTP parser and upload framing on a bare endpoint: p50 and server CPU per request, and their paired
    ratio to h11 + multipart."""
    lines = [
        "| parser | upload | p50 ms | server CPU ms per request | CPU / h11 + multipart |",
        "|---|---|---|---|---|",
    ]
    for e in report["summary"]:
        cpu = e["server_cpu_ms_vs_h11_multipart"]
        ratio = "–" if cpu is None else f"{cpu['median']:.2f} ({cpu['min']:.2f}-{cpu['max']:.2f})"
        lines.append(f"| {e['parser']} | {e['upload']} | {e['p50_ms']:.2f} | {e['server_cpu_ms']:.2f} | {ratio} |")
    text = (f"Median (range) over {report['rounds']} alternating rounds of {report['requests']} sequential requests, "
            f"each a {report['image']} upload. " + describe(report, source))  # fmt: skip
    return "\n".join(lines) + "\n\n" + wrap(text)


def _paired_shape(report: dict[str, Any]) -> tuple[int, int]:
    """Rounds and the most clients of a paired server benchmark (``bench/paired_servers.py``)."""
    return len({r["round"] for r in report["runs"]}), max(r["clients"] for r in report["runs"])


def _ratio_cell(spread: dict[str, Any]) -> str:
    """A within-round ratio's median and range: ``1.07x (1.02-1.12)``."""
    return f"{spread['median']:.2f}x ({spread['min']:.2f}-{spread['max']:.2f})"


def _difference_cell(spread: dict[str, Any] | None) -> str:
    """A within-round difference's median and range in ms: ``-1.9 (-2.5 to -1.5)`` (a dash where none)."""
    return "–" if spread is None else f"{spread['median']:+.1f} ({spread['min']:+.1f} to {spread['max']:+.1f})"


def serve_lanes_table(report: dict[str, Any], source: str) -> str:
    """``--lanes 2`` against ``--lanes 1``, compared within alternating rounds: median and range per model
    and backend."""
    rounds, most = _paired_shape(report)
    lines = [
        f"| model | backend | requests/s at {most} clients, lanes 2 / lanes 1 | p50 at 1 client, "
        "lanes 2 - lanes 1 (ms) |",
        "|---|---|---|---|",
    ]
    for side in report["summary"]:
        speed = next(v for k, v in side.items() if k.startswith("requests_per_s_"))
        lines.append(f"| {ARCH_LABELS.get(side['arch'], side['arch'])} | {side['backend']} | {_ratio_cell(speed)} | "
                     f"{_difference_cell(side.get('p50_ms_1_client_lanes2_minus_lanes1'))} |")  # fmt: skip
    return "\n".join(lines) + "\n\n" + wrap(f"Median (range) over {rounds} rounds. " + describe(report, source))


def serve_compile_table(report: dict[str, Any], source: str) -> str:
    """``xrayfm serve --compile`` against the same server without it, compared within alternating rounds: median
    and range per model and precision, and the seconds from a server's start to its first answer."""
    rounds, most = _paired_shape(report)
    lines = [
        f"| model | precision | requests/s at {most} clients, compiled / eager | p50 at 1 client, compiled - eager "
        "(ms) | start to first answer, eager / compiled (s) |",
        "|---|---|---|---|---|",
    ]
    for side in report["summary"]:
        speed = next(v for k, v in side.items() if k.startswith("requests_per_s_"))
        up = side["startup_s"]
        lines.append(f"| {ARCH_LABELS.get(side['arch'], side['arch'])} | {side['precision']} | {_ratio_cell(speed)} | "
                     f"{_difference_cell(side['p50_ms_1_client_compiled_minus_eager'])} | "
                     f"{up['eager']['median']:.0f} / {up['compiled']['median']:.0f} "
                     f"({up['compiled']['min']:.0f}-{up['compiled']['max']:.0f}) |")  # fmt: skip
    text = f"Median (range) over {rounds} rounds, PyTorch backend. " + describe(report, source)
    return "\n".join(lines) + "\n\n" + wrap(text)


def phantom_bullet(report: dict[str, Any], source: str) -> str:
    """The Development list's phantom-throughput item."""
    by_size = {r["size"]: r for r in report["results"]}
    gen, write = "generate_images_per_s", "write_native_images_per_s"
    return (
        f"  - `bench/phantom_throughput.py`: phantom generation {rate(by_size[256][gen])} img/s at 256 px "
        f"({rate(by_size[128][gen])} at 128 px);\n"
        f"    writing the native layout (image + 3 masks + CSVs) {rate(by_size[256][write])} img/s at 256 px.\n"
    ) + wrap(describe(report, source), "    ")


def io_bullet(report: dict[str, Any], source: str) -> str:
    """The Development list's image-reading item."""
    r = {name: rate(res["files_per_s"]) for name, res in report["results"].items()}
    text = (
        f"`bench/io_read_throughput.py`: `read_xray` on real files, see `{source}`: 8-bit PNG "
        f"{r['png8_224 (kermany)']} files/s at 224 px and {r['png8_512 (jsrt)']} files/s at 512 px; CR DICOM of "
        f"~1.9k px {r['dicom_uncompressed (CR ~1.9k)']} files/s uncompressed, {r['dicom_jpeg2000 (CR ~1.9k)']} "
        f"files/s in JPEG 2000 lossless at full size (pydicom's decoder plugins) and "
        f"{r['dicom_jpeg2000 for 512 px (CR ~1.9k)']} files/s read for a 512 px model "
        "(`target_size=512`: the coarsest resolution level still covering 512 px)."
    )
    return wrap(text, "    ").replace("    ", "  - ", 1) + wrap(describe(report, source), "    ")


def adam_table(report: dict[str, Any], source: str) -> str:
    """Adam's training throughput and memory per step against a plain supervised step, and the provenance."""
    cpu = report["setup"]["device"] == "cpu"
    memory = "peak RSS" if cpu else "peak allocated"
    lines = [
        f"| backbone | px | batch | Adam pairs/s | plain images/s | Adam / plain step time | Adam {memory} MiB "
        f"(steps add) | plain {memory} MiB (steps add) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        cells = [r["arch"], str(r["img_size"]), str(r["batch"]), rate(r["moco_pairs_per_s"]),
                 rate(r["plain_images_per_s"]), f"{half_up(r['ratio_moco_over_plain'], 2)}x",
                 f"{int(half_up(r['moco_peak_mib'])):,} ({int(half_up(r['moco_step_mib'])):,})",
                 f"{int(half_up(r['plain_peak_mib'])):,} ({int(half_up(r['plain_step_mib'])):,})"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    setup = report["setup"]
    pairs = report["decomposer_pairs_per_s_one_thread"]
    decomposer = ", ".join(f"{rate(v)} pairs/s at {k} px" for k, v in pairs.items())
    text = (
        f"Granularity n = {setup['granularity']} (pruner {'on' if setup['prune_threshold'] is not None else 'off'}), "
        f"queue {setup['queue_size']:,}, {setup['precision']}, {setup['timed_steps']} timed steps after "
        f"{setup['warmup_steps']} untimed; plain = the same backbone with a linear head, cross-entropy, the same "
        f"SGD, on the query batch. The decomposer alone makes {decomposer} in one thread (one loader worker). "
        + describe(report, source)
    )
    return "\n".join(lines) + "\n\n" + wrap(text)


def _signed(x: float) -> str:
    return f"{'+' if x >= 0 else '-'}{abs(half_up(x, 3))}"


def eve_table(report: dict[str, Any], source: str) -> str:
    """Eve's locality and compositionality per backbone, the paired locality differences and the provenance."""
    splits = report["settings"]["splits"]
    lines = [
        "| model | locality NN accuracy (chance) | compositionality medians 2 / 3 / 2x2 (control) |",
        "|---|---|---|",
    ]
    for label, m in report["models"].items():
        loc, comp = m["locality"], m["compositionality"]
        medians = " / ".join(str(half_up(comp[s]["median"], 3)) for s in splits)
        controls = " / ".join(str(half_up(comp[s]["control_median"], 3)) for s in splits)
        init = "random init" if m["pretrained"] is None else f"`{m['pretrained']}`"
        lines.append(f"| {label} ({m['arch']}, {init}) | {half_up(loc['accuracy'], 3)} ({half_up(loc['chance'], 3)}) "
                     f"| {medians} ({controls}) |")  # fmt: skip
    test, first = report["test_set"], next(iter(report["models"].values()))
    diffs = "; ".join(
        f"{d['model']} - {d['against']} {_signed(d['difference'])} [{_signed(d['low'])}, {_signed(d['high'])}]"
        for d in report["differences"]
    )
    seeds = report["pretraining_seeds"]
    once = "Each init was pretrained once (one seed)" if seeds == 1 else f"Each init was pretrained {seeds} times"
    text = (
        f"{test['images']} JSRT test images ({test['patients']} patients, {first['locality']['queries']} landmark "
        f"patches), held out of the pretraining pool `{report['pool']['folder']}`; patches resized to "
        f"{report['img_size']} px. Paired locality differences, 95% interval over test patients "
        f"({report['settings']['n_boot']:,} resamples): {diffs}. {once}: the intervals cover test patients, "
        "not pretraining runs. " + describe(report, source)
    )
    return "\n".join(lines) + "\n\n" + wrap(text)


def multitask_units_table(report: dict[str, Any], source: str) -> str:
    """Foundation X step throughput, memory and trained parameters per unit and phase, and the provenance."""
    setup = report["setup"]
    memory = "peak RSS" if setup["device"] == "cpu" else "peak allocated"
    lines = [
        f"| unit | phase | images/s | {memory} MiB (steps add) | trainable params | updated params |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        cells = [f"{r['kind']} (`{r['unit']}`)", r["phase"], rate(r["images_per_s"]),
                 f"{int(half_up(r['peak_mib'])):,} ({int(half_up(r['step_mib'])):,})",
                 f"{r['trainable_params']:,}", f"{r['updated_params']:,}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    text = (
        f"{setup['arch']} at {setup['img_size']} px, batch {setup['batch_size']}, recipe {setup['recipe']}, "
        f"Deformable DETR {setup['detr_preset']} (d_model {setup['detr']['d_model']}, "
        f"{setup['detr']['encoder_layers']} + {setup['detr']['decoder_layers']} layers, "
        f"{setup['detr']['num_queries']} queries), {setup['precision']}, {setup['timed_steps']} timed steps after "
        f"{setup['warmup_steps']} untimed; a step = student and teacher forward, backward, AdamW. "
        + describe(report, source)
    )
    return "\n".join(lines) + "\n\n" + wrap(text)


def _mean_sd(stat: dict[str, Any], digits: int = 3) -> str:
    """``mean ± sd`` of a seed summary (``mean`` only for one seed, ``–`` when undefined)."""
    if stat.get("mean") is None:
        return "–"
    sd = "" if stat.get("sd") is None else f" ± {half_up(stat['sd'], digits)}"
    return f"{half_up(stat['mean'], digits)}{sd}"


def _pooled(d: dict[str, Any], digits: int = 3) -> str:
    """A difference pooled over seeds: ``+0.012 [-0.004, +0.030]``, bold where the interval excludes zero."""
    if d.get("difference") is None:
        return "–"
    text = f"{half_up(d['difference'], digits):+}"
    if d.get("low") is not None:
        text += f" [{half_up(d['low'], digits):+}, {half_up(d['high'], digits):+}]"
        if d["low"] > 0 or d["high"] < 0:
            text = f"**{text}**"
    return text


def foundation_x_label_efficiency_table(report: dict[str, Any], source: str) -> str:
    """JSRT lung Dice per training fraction from the multi-task backbone and from the same task alone, the
    paired difference pooled over seeds, and the provenance."""
    stats, ft, pre = report["seed_statistics"], report["finetune"], report["pretraining"]
    rows = {(r["backbone"], float(r["fraction"])): r for r in stats["rows"] if r["metric"] == "mean_dice"}
    images = {float(r["fraction"]): r["train_images"] for r in report["rows"] if r["metric"] == "mean_dice"}
    diffs = {d["row"]: d for d in stats["differences"] if d["metric"] == "mean_dice"}
    lines = ["| training fraction (images) | single task: Dice | multi-task backbone: Dice | multi-task - single "
             "task [95% CI, images x seeds] |", "|---|---|---|---|"]  # fmt: skip
    for fraction in ft["fractions"]:
        label = f"{fraction:g}"
        cells = [f"{100 * fraction:g}% ({images.get(fraction, '?')})",
                 *(_mean_sd(rows.get((b, fraction), {})) for b in ("single_task", "multitask")),
                 _pooled(diffs.get(f"multitask full f{label}", {}))]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    steps = ", ".join(f"{k} {v}" for k, v in pre["steps_per_unit"].items())
    text = (
        f"{report['arch']} at {report['img_size']} px from {report['pretrained'] or 'random init'}; multi-task "
        f"pretraining run `{pre['run']}` (seed {pre['seed']}, batch {pre['batch_size']}, {pre['cycles']} cycles of "
        f"{len(pre['units'])} units without JSRT; steps per unit: {steps}); fine-tuning: full, {ft['steps']} steps of "
        f"{ft['batch_size']} at every fraction, lr {ft['lr']:g}, layer decay {ft['layer_decay']:g}, seeds "
        f"{', '.join(map(str, ft['seeds']))}; Dice on the JSRT test split, mean ± sd over seeds. "
        + describe(report, source)
    )
    return "\n".join(lines) + "\n\n" + wrap(text)


def foundation_x_real_table(report: dict[str, Any], source: str) -> str:
    """Per unit: single-task and multi-task (teacher, student) headline over seeds, the paired differences
    pooled over seeds, and the provenance."""
    lines = ["| unit | metric (split, images) | single task | multi-task teacher | multi-task student | teacher - "
             "single [95% CI] | student - single [95% CI] |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for key, u in report["units"].items():
        cells = [f"`{key}`", f"{u['metric']} ({u['split']}, {u['n']})",
                 *(_mean_sd(u[m]) for m in ("single_task", "multitask_teacher", "multitask_student")),
                 *(_pooled(u[d]["pooled"]) for d in ("teacher_minus_single", "student_minus_single"))]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    seeds = ", ".join(s.removeprefix("seed_") for s in report["seeds"])
    text = (
        f"{report['arch']} at {report['img_size']} px, batch {report['batch_size']}, from "
        f"{report['pretrained'] or 'random init'}, recipe {report['recipe']}, seeds {seeds}; budget: "
        f"{report['budget_definition']}; values are mean ± sd over the seeds; differences on the same images, pooled "
        "over the seeds (interval resampling images and seeds; bold where it excludes zero). "
        + describe(report, source)
    )
    return "\n".join(lines) + "\n\n" + wrap(text)


def loader_throughput_table(report: dict[str, Any], source: str) -> str:
    """Images/s of one loader worker from raw PNG files vs shards per size, the workers each GPU rate needs,
    whether shards reach their target speed-up, and the provenance."""
    setup, target = report["setup"], report["target"]
    gpu_rates = [f"{r:g}" for r in setup["gpu_rates_images_per_s"]]  # the script's workers_needed keys
    header = ["px", "read", "images/s per worker", "speed-up over raw files",
              *(f"workers for {rate(float(r))} images/s" for r in gpu_rates)]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    builds = []
    for size, result in report["results"].items():
        px = size.removesuffix("px")
        builds.append(
            f"{px} px: " + ", ".join(f"{e} {half_up(t, 1)} s" for e, t in result["shard_build_seconds"].items())
        )
        for name, label in LOADER_READS.items():
            r = result[name]
            speedup = f"{half_up(r['speedup_over_raw'], 1)}x" if "speedup_over_raw" in r else "1x (baseline)"
            cells = [px, label, rate(r["images_per_s"]), speedup,
                     *(str(r["workers_needed"][g]) for g in gpu_rates)]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    goal = f"{half_up(target['shards_speedup_at_224px'], 1)}x"
    met = ", ".join(
        f"{e} {half_up(v, 1)}x ({'met' if target['met'][e] else 'not met'})" for e, v in target["measured"].items()
    )
    sets = ", ".join(f"`{folder}` ({name})" for name, folder in setup["sets"].items())
    text = (
        f"{'A --quick run: a check that the script works, not a measurement. ' if setup['quick'] else ''}"
        f"One process on {setup['threads_used']} thread (one DataLoader worker) reads {setup['images']:,} images "
        f"({setup['bits']}-bit PNG, {setup['source_size_px']} px) from {sets}; best of {setup['repeats']} passes. Raw "
        "files: PNG decode and antialiased resize to the size; shards: the same images pre-resized by `xrayfm shards "
        "build` (square, 8-bit PNG or raw pixels) streamed by `ShardDataset`. Workers = ceil(GPU rate / images/s "
        f"per worker). Target: shards at least {goal} faster than raw files at 224 px: "
        f"{met or 'not measured (no 224 px run)'}. "
        f"Shard builds (not in the rates): {'; '.join(builds)}. " + describe(report, source)
    )
    return "\n".join(lines) + "\n\n" + wrap(text)


def renderer(name: str) -> tuple[str, Callable[[dict[str, Any], str], str]]:
    """The results file stem and the function that renders block ``name`` from it."""
    stem, _, part = name.partition(":")
    if stem.startswith(("finetune_real", "adam_real")):
        if part == "provenance":
            return stem, finetune_provenance if stem.startswith("finetune_real") else adam_provenance
        if part.endswith(":differences"):
            experiment = part.removesuffix(":differences")
            return stem, lambda report, source: differences_table(
                report["experiments"][experiment]["seed_statistics"], heading=False
            )
        return stem, lambda report, source: finetune_table(report, part)
    fixed = {"serve_latency": serve_table, "phantom_throughput": phantom_bullet, "io_read_throughput": io_bullet,
             "adam_throughput": adam_table, "eve_real": eve_table, "multitask_units": multitask_units_table,
             "loader_throughput": loader_throughput_table,
             "foundation_x_label_efficiency": foundation_x_label_efficiency_table,
             "foundation_x_real": foundation_x_real_table, "serve_lanes": serve_lanes_table,
             "serve_compile": serve_compile_table,
             "http_parsers": http_parsers_table}  # fmt: skip
    for prefix, fn in fixed.items():
        if stem.startswith(prefix) and not part:
            return stem, fn
    raise ValueError(f"README block bench:{name} has no renderer")


def render(text: str, results: Path) -> str:
    """``text`` with every bench block rewritten from the JSON in ``results``."""

    def block(m: re.Match[str]) -> str:
        stem, fn = renderer(m["name"])
        path = results / f"{stem}.json"
        source = path.relative_to(REPO) if path.is_relative_to(REPO) else path
        return m["head"] + fn(json.loads(path.read_text()), str(source)) + m["tail"]

    return BLOCK.sub(block, text)


def main(argv: list[str] | None = None) -> int:
    """Rewrite the README's bench blocks (or, with ``--check``, report whether they are current)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readme", type=Path, default=REPO / "README.md")
    ap.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if the README is not current")
    args = ap.parse_args(argv)
    text = args.readme.read_text()
    names = [m["name"] for m in BLOCK.finditer(text)]
    if not names:
        print(f"{args.readme}: no bench blocks", file=sys.stderr)
        return 1
    new = render(text, args.results)
    if new == text:
        print(f"{args.readme}: {len(names)} bench blocks are current")
        return 0
    stale = [m["name"] for m, n in zip(BLOCK.finditer(text), BLOCK.finditer(new)) if m["body"] != n["body"]]
    if args.check:
        print(f"{args.readme}: blocks {stale} differ from {args.results}; run python bench/readme_tables.py",
              file=sys.stderr)  # fmt: skip
        return 1
    atomic_write_text(args.readme, new)
    print(f"{args.readme}: rewrote {stale}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
