"""Every ``bash`` and ``python`` block of README.md runs, so a README change that breaks one fails CI.

Each block runs in its own scratch folder, as a new user would run it; what it names and does not
have (``/data/nih``, ``IMAGE.dcm``, the run an earlier section made) is replaced by a small stand-in,
and training commands are shrunk, all through the mapping in ``stand_ins.py`` beside this file.
Commands that cannot run here are listed there with the reason (and must exist in the README).

``xrayfm`` commands run in this process through :func:`xrayfm.cli.main` with the command line the
README gives (after substitution), so the suite pays PyTorch's import once, not per command;
``xrayfm serve`` runs as its own process (it blocks), is asked for ``/health`` and the README's
``curl`` lines, then stopped. Python blocks run with ``exec`` in the scratch folder.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import stand_ins as S

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
XRAYFM = Path(sys.executable).parent / "xrayfm"


# ---------------------------------------------------------------- extraction


@dataclass(frozen=True)
class Block:
    """One fenced code block: its id (``section-slug-N``), language, first line and text."""

    id: str
    lang: str
    line: int
    text: str


def slug(heading: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-")


def extract_blocks(markdown: str, langs: tuple[str, ...] = ("bash", "python")) -> list[Block]:
    """The fenced blocks of ``langs`` in ``markdown``, numbered from 1 within their section."""
    blocks, heading, counts = [], "top", {}
    fence: tuple[str, int, list[str]] | None = None
    for number, line in enumerate(markdown.splitlines(), 1):
        if fence is None:
            if m := re.match(r"^#{1,6}\s+(.*)", line):
                heading = slug(m.group(1))
            elif m := re.match(r"^```\s*(\w*)", line):
                fence = (m.group(1), number, [])
        elif line.startswith("```"):
            lang, start, body = fence
            fence = None
            if lang in langs:
                counts[heading] = counts.get(heading, 0) + 1
                blocks.append(Block(f"{heading}-{counts[heading]}", lang, start + 1, "\n".join(body) + "\n"))
        else:
            fence[2].append(line)
    return blocks


def split_commands(script: str) -> list[str]:
    """The commands of a bash block: ``\\`` continuations joined, comments and blank lines dropped."""
    commands, current = [], ""
    for raw in script.splitlines():
        current += raw
        if current.endswith("\\"):
            current = current[:-1]
            continue
        text = strip_comment(current).strip()
        current = ""
        if text:
            commands.append(re.sub(r"\s+", " ", text))
    if current.strip():
        commands.append(strip_comment(current).strip())
    return commands


def strip_comment(line: str) -> str:
    """``line`` without a ``#`` comment (a ``#`` inside quotes or a word is kept)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line


def skip_reason(command: str) -> str | None:
    return next((why for start, why in S.SKIPS.items() if command.startswith(start)), None)


def override(argv: list[str]) -> list[str]:
    """The options appended to an ``xrayfm`` command line (longest matching prefix of words)."""
    words = [a for a in argv if not a.startswith("-")]
    for n in (2, 1):
        if tuple(words[:n]) in S.OVERRIDES:
            return S.OVERRIDES[tuple(words[:n])]
    return []


BLOCKS = extract_blocks(README.read_text())


# ---------------------------------------------------------------- the extractor itself

SAMPLE = """# Tool
Text.

```bash
make demo   # a comment
tool run a \\
    --flag "x # not a comment" \\
    --other 2   # trailing comment

# a comment line
tool two
```

## Use it

```python
print(1)
```

```text
not code
```

```python
print(2)
```
"""


def test_extractor_finds_blocks_per_section_and_splits_commands() -> None:
    blocks = extract_blocks(SAMPLE)
    assert [(b.id, b.lang, b.line) for b in blocks] == [("tool-1", "bash", 5), ("use-it-1", "python", 17),
                                                        ("use-it-2", "python", 25)]  # fmt: skip
    assert split_commands(blocks[0].text) == [
        "make demo",
        'tool run a --flag "x # not a comment" --other 2',
        "tool two",
    ]
    assert blocks[2].text == "print(2)\n"


def test_the_mapping_only_names_what_the_readme_says() -> None:
    """Every skip, substitution, stand-in and xfail entry still matches the README (none goes stale)."""
    text = README.read_text()
    ids = {b.id for b in BLOCKS}
    commands = [c for b in BLOCKS if b.lang == "bash" for c in split_commands(b.text)]
    for start in S.SKIPS:
        assert any(c.startswith(start) for c in commands), f"stand_ins.SKIPS names {start!r}, no README command"
    for old, _ in S.SUBSTITUTIONS:
        assert old in text, f"stand_ins.SUBSTITUTIONS replaces {old!r}, which the README no longer has"
    for table in (S.NEEDS, S.PRELUDES, S.XFAIL, S.REUSES, {v[0]: 0 for v in S.REUSES.values()}):
        assert set(table) <= ids, f"no README block {set(table) - ids}; blocks are {sorted(ids)}"
    for start in S.EXTRA:
        assert any(c.startswith(start) for c in commands), f"stand_ins.EXTRA names {start!r}, no README command"
    for words in S.OVERRIDES:
        assert any(c.startswith(" ".join(("xrayfm", *words))) for c in commands), words


def test_every_block_runs_or_is_skipped_with_a_reason() -> None:
    assert len(BLOCKS) >= 15 and {b.lang for b in BLOCKS} == {"bash", "python"}
    runnable = [c for b in BLOCKS if b.lang == "bash" for c in split_commands(b.text) if not skip_reason(c)]
    assert len(runnable) >= 25


# ---------------------------------------------------------------- stand-ins, made once


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def xrayfm_main(argv: list[str]) -> tuple[int, str]:
    """Run ``xrayfm ARGV`` in this process: (exit status, stdout + stderr)."""
    from xrayfm.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        try:
            code = main(argv)
        except SystemExit as exc:  # --help
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return code, buf.getvalue()


def _check(argv: list[str]) -> None:
    code, out = xrayfm_main(argv)
    assert code == 0, f"xrayfm {' '.join(argv)} -> {code}\n{out[-3000:]}"


def _write_chexpert(root: Path, phantom: Path) -> None:
    """A CheXpert-v1.0 folder: 14 train and 4 valid frontal JPEGs (phantoms), every class positive once."""
    from PIL import Image

    findings = ["No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
                "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
                "Fracture", "Support Devices"]  # fmt: skip
    pngs = sorted((phantom / "images").glob("*.png"))
    for part, n in (("train", 14), ("valid", 4)):
        rows = []
        for i in range(n):
            rel = f"CheXpert-v1.0/{part}/patient{i + (0 if part == 'train' else 500):05d}/study1/view1_frontal.jpg"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.open(pngs[i % len(pngs)]).convert("L").save(root / rel, quality=90)
            labels = ["1.0" if k == i else ("-1.0" if k == (i + 3) % 14 else "0.0") for k in range(14)]
            rows.append([rel, "Female", "60", "Frontal", "PA", *labels])
        with open(root / "CheXpert-v1.0" / f"{part}.csv", "w", newline="") as f:
            csv.writer(f).writerows([["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *findings], *rows])


def _write_jsrt(root: Path, phantom: Path) -> None:
    """The JSRT PNG layout (Train/Val/Test, Images + lung Labels) from phantom images and lung masks."""
    pngs = sorted((phantom / "images").glob("*.png"))
    for i, png in enumerate(pngs[:16]):
        folder = "Train" if i < 10 else ("Val" if i < 12 else "Test")
        name = f"JPC{'LN' if i % 2 else 'NN'}{i + 1:03d}"
        for sub, src, dst in (("Images", png, f"{name}.png"),
                              ("Labels", phantom / "masks" / f"{png.stem}_lungs.png", f"{name}_labels.png")):  # fmt: skip
            (root / folder / sub).mkdir(parents=True, exist_ok=True)
            shutil.copy(src, root / folder / sub / dst)


def _write_mura(root: Path, phantom: Path) -> None:
    """A MURA-v1.1 folder: 2 body parts, one image per study, studies alternately positive."""
    pngs = sorted((phantom / "images").glob("*.png"))
    mura = root / "MURA-v1.1"
    for part, n, offset in (("train", 12, 0), ("valid", 4, 12)):
        paths, studies = [], []
        for i in range(n):
            label = i % 2
            study = f"MURA-v1.1/{part}/XR_{('WRIST', 'HAND')[i % 4 // 2]}/patient{i + offset:05d}/study1_" + (
                "positive" if label else "negative") + "/"  # fmt: skip
            (root / study).mkdir(parents=True, exist_ok=True)
            shutil.copy(pngs[(i + offset) % len(pngs)], root / study / "image1.png")
            paths.append(f"{study}image1.png\n")
            studies.append(f"{study},{label}\n")
        (mura / f"{part}_image_paths.csv").write_text("".join(paths))
        (mura / f"{part}_labeled_studies.csv").write_text("".join(studies))


def _write_mine(root: Path, phantom: Path) -> None:
    """A generic csv dataset: labels.csv with a nodule column and a lung-mask column named ``mask``,
    its files copied under the root (files a label file names outside it are refused by default)."""
    root.mkdir(parents=True)
    rows = [["image", "mask", "patient_id", "nodule"]]
    with open(phantom / "labels.csv") as f:
        for rec in csv.DictReader(f):
            for rel in (rec["image"], rec["lungs_mask"]):
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(phantom / rel, root / rel)
            rows.append([rec["image"], rec["lungs_mask"], rec["patient_id"], rec["nodule"]])
    with open(root / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)


def build_world(world: Path) -> None:
    """Everything the README assumes a user has, small: data in each layout, runs, weights."""
    import torch

    from xrayfm.data.phantom_io import write_phantom_dataset
    from xrayfm.models import create_model

    cwd = Path.cwd()
    os.chdir(world)
    try:
        _check(["demo", "--out", "demo_output", *S.OVERRIDES[("demo",)]])
        phantom = world / "demo_output" / "phantom"
        write_phantom_dataset(world / "nih", n=24, seed=0, layout="nih_cxr14", size=64)
        write_phantom_dataset(world / "dicom", n=1, seed=0, layout="native", size=64, dicom=True)
        _write_chexpert(world / "chexpert", phantom)
        _write_jsrt(world / "jsrt", phantom)
        _write_mura(world / "mura", phantom)
        _write_mine(world / "mine", phantom)
        runs = world / "runs"
        runs.mkdir()
        for name in ("mim", "teacher", "mim_s"):  # mim_s (an S/16 run in the README) is Ti/16 here
            shutil.copytree(world / "demo_output" / "mim", runs / name)
        shutil.copytree(world / "demo_output" / "finetune", runs / "ft")
        _check(["finetune", "nih_cxr14", "nih", "--task", "findings", "--out", "runs/cxr14", "--eval-split", "test",
                "--allow-empty-classes", *S.TRAIN])  # fmt: skip
        for ckpt in world.rglob("last.ckpt"):  # resuming is not what the blocks do with these runs
            shutil.rmtree(ckpt) if ckpt.is_dir() else ckpt.unlink()
        torch.save({"model": create_model("eva_x_small_patch16").state_dict()}, world / "eva_x_s_16.pt")
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """The stand-ins, built once per test session (once for all pytest-xdist workers)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    base = base if worker_id == "master" else base.parent
    world, done, failed = base / "readme_world", base / "readme_world.done", base / "readme_world.failed"
    with FileLock(str(base / "readme_world.lock")):
        if failed.exists():  # built once per session: the first failure is every block's
            pytest.fail(f"building the README stand-ins failed (see the first error):\n{failed.read_text()}")
        if not done.exists():
            shutil.rmtree(world, ignore_errors=True)
            world.mkdir()
            try:
                build_world(world)
            except BaseException as exc:
                failed.write_text(str(exc)[-3000:])
                raise
            done.touch()
    return world


def fill(text: str, values: dict[str, str]) -> str:
    """``text`` with the substitutions of the mapping, their ``{placeholders}`` filled from ``values``."""
    for old, new in S.SUBSTITUTIONS:
        if old in text:
            text = text.replace(old, re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], new))
    return text


def link_tree(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (a block may add files or replace them atomically, never the world's)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst, copy_function=os.link)
    else:
        os.link(src, dst)


# ---------------------------------------------------------------- running blocks


class Server:
    """``xrayfm serve`` in its own process; ready once ``/health`` answers."""

    def __init__(self, argv: list[str], cwd: Path, port: int) -> None:
        self.port, self.log = port, cwd / f"serve_{port}.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([str(XRAYFM), *argv], cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                         env={**os.environ, "CI": "true"})  # fmt: skip
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    assert r.status == 200
                    return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(f"xrayfm {' '.join(argv)} did not serve:\n{self.log.read_text()[-3000:]}")
                time.sleep(0.5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run_command(command: str, cwd: Path, values: dict[str, str], servers: list[Server]) -> None:
    argv = shlex.split(fill(command, values))
    argv += next((extra for start, (extra, _) in S.EXTRA.items() if command.startswith(start)), [])
    where = f"README command: {command}\nran as: {shlex.join(argv)}"
    if argv[0] == "xrayfm" and argv[1:2] == ["serve"]:
        port = free_port()
        values["port"] = str(port)  # later curl lines of the block talk to this server
        servers.append(Server([*argv[1:], *[a.format(port=port) for a in override(argv[1:])]], cwd, port))
    elif argv[0] == "xrayfm":
        extra = [a.format_map(values) for a in override(argv[1:])]
        code, out = xrayfm_main([*argv[1:], *extra])
        assert code == 0, f"{where} {shlex.join(extra)}\nexit {code}:\n{out[-4000:]}"
    elif argv[0] == "make":
        res = subprocess.run(["make", "-n", *argv[1:]], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, f"{where}\n{res.stderr}"
    else:
        if argv[0] == "curl":
            argv = [argv[0], "-sS", "--fail-with-body", "-o", str(cwd / "curl.out"), *argv[1:]]
        res = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, f"{where}\nexit {res.returncode}:\n{res.stdout[-2000:]}{res.stderr[-2000:]}"


def run_bash_block(block: Block, cwd: Path, values: dict[str, str]) -> None:
    servers: list[Server] = []
    try:
        for command in split_commands(block.text):
            if skip_reason(command) and not command.startswith("make "):
                continue
            run_command(command, cwd, values, servers)
    finally:
        for server in servers:
            server.stop()


def run_python_block(block: Block, cwd: Path, values: dict[str, str]) -> None:
    code = S.PRELUDES.get(block.id, "") + fill(block.text, values)
    exec(compile(code, f"README.md:{block.line} ({block.id})", "exec"), {"__name__": "__readme__"})


def _param(block: Block):
    marks = [pytest.mark.xfail(strict=True, reason=S.XFAIL[block.id])] if block.id in S.XFAIL else []
    if "../shared/datasets" in block.text:
        marks.append(pytest.mark.shared_data)
    return pytest.param(block, id=block.id, marks=marks)


@pytest.mark.parametrize("block", [_param(b) for b in BLOCKS])
def test_readme_block_runs(block: Block, world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                           request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> None:  # fmt: skip
    if block.id in _CONTINUED:  # a later block continues from this one's folder: keep it past this test
        tmp_path = tmp_path_factory.mktemp("continued")
    values = {"nih": str(world / "nih"), "chexpert": str(world / "chexpert" / "CheXpert-v1.0"),
              "jsrt": str(world / "jsrt"), "mura": str(world / "mura" / "MURA-v1.1"), "mine": str(world / "mine"),
              "dicom": str(next((world / "dicom" / "images").glob("*.dcm"))), "repo": str(REPO),
              "png": str(world / "demo_output" / "phantom" / "images" / "phantom_000000.png"),
              "port": "8000"}  # fmt: skip
    if "../shared/datasets" in block.text:
        values["shared"] = str(request.getfixturevalue("shared_datasets"))
    for rel in S.NEEDS.get(block.id, []):
        link_tree(world / rel, tmp_path / rel)
    earlier, outputs = S.REUSES.get(block.id, ("", []))
    if earlier in _RAN:  # the block before ran in this process: continue from its folder
        for rel in outputs:
            link_tree(_RAN[earlier] / rel, tmp_path / rel)
    monkeypatch.chdir(tmp_path)
    (run_bash_block if block.lang == "bash" else run_python_block)(block, tmp_path, values)
    _RAN[block.id] = tmp_path


#: Scratch folders of the blocks that ran in this process, by block id (for :data:`stand_ins.REUSES`).
_RAN: dict[str, Path] = {}
#: Blocks a later block continues from: their folders must outlive their test (pytest deletes a passed
#: test's ``tmp_path``, see ``tmp_path_retention_policy`` in pyproject.toml).
_CONTINUED = {earlier for earlier, _ in S.REUSES.values()}
