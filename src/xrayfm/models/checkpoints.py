"""Reading weight files safely (what :func:`xrayfm.models.create_model` hands to timm's builder).

Files are read without executing code: safetensors as is, PyTorch pickles with
``torch.load(weights_only=True)``, whose unpickler also accepts the classes in
:data:`SAFE_CLASSES` during that one load (training checkpoints such as the EVA-X fine-tuned
files pickle their ``argparse.Namespace`` of arguments next to the weights). A pickle that needs
any other class is refused with a clear error unless the caller says the file is trusted; one
that would run code (``os.system``, ``eval``, ``subprocess``...) is named as such, whatever
class PyTorch's refusal names first, since every global the pickle names is listed (without
importing or calling any) when a load is refused.
Published EVA / EVA-X layouts (``mlp.w12``, ``mlp.w3``, ``attn.inner_attn_ln``, ``mlp.ffn_ln``;
MIM-only ``mask_token`` / ``lm_head`` present or not) are converted by the EVA-X checkpoint filter
inside the builder; the registry checks that every backbone key is present after conversion.
"""

from __future__ import annotations

import argparse
import io
import logging
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from xrayfm.errors import XrayfmError

log = logging.getLogger(__name__)

WRAPPER_KEYS = ("model_ema", "model", "module", "state_dict")
#: Classes a weights-only load may rebuild: plain records of values, no code runs to build them.
SAFE_CLASSES: tuple[type, ...] = (argparse.Namespace,)
#: Modules any of whose functions can run a command or arbitrary code when a pickle calls them.
CODE_MODULES = frozenset({
    "os", "posix", "nt", "sys", "subprocess", "_posixsubprocess", "pty", "shutil", "socket", "signal", "platform",
    "importlib", "runpy", "code", "codeop", "types", "ctypes", "multiprocessing", "asyncio", "pickle", "_pickle",
    "marshal", "dill", "cloudpickle", "webbrowser", "pdb", "bdb", "timeit", "commands", "popen2",
})  # fmt: skip
#: Single globals that run code, import modules or reach any attribute of any object.
CODE_GLOBALS = frozenset({
    *(f"builtins.{n}" for n in ("eval", "exec", "execfile", "compile", "getattr", "setattr", "delattr",
                                "__import__", "open", "input", "breakpoint", "globals", "locals", "vars",
                                "apply", "exit", "quit", "help")),
    "operator.attrgetter", "operator.methodcaller",
})  # fmt: skip
#: The global a PyTorch refusal names, in its wordings across versions ("Unsupported global: GLOBAL
#: numpy.x was not an allowed global", "Trying to load unsupported GLOBAL posix.system whose module ...").
_REFUSED_GLOBAL = re.compile(r"unsupported global\W*(?:global\s+)?([A-Za-z_][\w.]*)", re.IGNORECASE)


def read_state_dict(path: str | Path, *, allow_unsafe: bool = False) -> dict[str, torch.Tensor]:
    """Read a weight file into a flat ``{name: tensor}`` dict.

    Args:
        path: ``.safetensors``, or a PyTorch file (``.pt``/``.pth``/``.bin``/``.ckpt``), possibly
            a training checkpoint whose weights sit under ``model_ema`` / ``model`` / ``module``
            / ``state_dict`` (the first present wins, as in the EVA-X release), next to other
            entries (``epoch``, an ``args`` namespace...) that are read and dropped. Tensors keep
            their dtype (the EVA-X pretrained files are fp16); loading casts them to the model's.
        allow_unsafe: Permit full unpickling for files that need it. Only for trusted files.

    Raises:
        XrayfmError: Missing or unreadable file, a pickle needing unsafe loading, or no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise XrayfmError(f"{path}: weight file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise XrayfmError(f"{path}: not a valid safetensors file ({exc})") from None
    return state_tensors(load_weights_file(path, allow_unsafe=allow_unsafe), path)


def load_weights_file(path: str | Path, *, allow_unsafe: bool = False, mmap: bool = False) -> Any:
    """What a PyTorch weight file holds, read with ``torch.load(weights_only=True)`` (plus :data:`SAFE_CLASSES`).

    Args:
        path: A ``.pt`` / ``.pth`` / ``.bin`` / ``.ckpt`` file.
        allow_unsafe: Permit full unpickling. Only for trusted files.
        mmap: Memory-map the tensors of a zip-format file (``torch.save``'s), so parts never used (an
            optimizer state) are never read; ignored for a legacy file.

    Raises:
        XrayfmError: Missing or unreadable file, or a pickle that needs unsafe loading (code it would run named).
    """
    path = Path(path)
    if not path.is_file():
        raise XrayfmError(f"{path}: weight file not found")
    mmap = mmap and zipfile.is_zipfile(path)
    try:
        with torch.serialization.safe_globals(list(SAFE_CLASSES)):
            return torch.load(path, map_location="cpu", weights_only=not allow_unsafe, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise _refusal(path, str(exc)) from None
    except Exception as exc:
        raise XrayfmError(f"{path}: not a readable PyTorch weight file ({type(exc).__name__}: {exc})") from None


def state_tensors(obj: Any, path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a loaded weight file: under the first of :data:`WRAPPER_KEYS` it has, else at its top level.

    Raises:
        XrayfmError: No tensors there (``path`` names the file).
    """
    for key in WRAPPER_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, Mapping) else {}
    if not tensors:
        raise XrayfmError(f"{path}: holds no tensors under {WRAPPER_KEYS} or at the top level")
    return tensors


def runs_code(name: str) -> bool:
    """Whether a pickled global (``module.name``) runs code when a pickle calls it.

    True for every function of :data:`CODE_MODULES` (``posix.system``, ``subprocess.Popen``) and
    for :data:`CODE_GLOBALS` (``builtins.eval``, ``builtins.getattr``...); False for ordinary
    classes and functions (``numpy.dtype``, ``collections.deque``), which only build values.
    """
    module, _, attr = _qualified(name).rpartition(".")
    return module.split(".")[0] in CODE_MODULES or f"{module}.{attr}" in CODE_GLOBALS


def _qualified(name: str) -> str:
    """``module.name``; PyTorch names builtins bare (``eval``) and Python 2 pickles ``__builtin__``."""
    module, _, attr = name.rpartition(".")
    return f"{'builtins' if module in ('', '__builtin__') else module}.{attr}"


def pickled_globals(path: str | Path) -> list[str]:
    """Every global (``module.name``) the pickle of a PyTorch file names, in order.

    Nothing is imported or called: each global is replaced by an inert stand-in while the pickle
    is walked. Reads the ``data.pkl`` of a zip file (``torch.save``'s format) or the pickles at the
    start of a legacy file; stops quietly where the pickle cannot be followed.

    Args:
        path: A PyTorch weight file.

    Returns:
        The globals named before the walk ended (empty when the file holds no pickle).
    """
    names: list[str] = []
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                member = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
                if member is not None:
                    _GlobalLister(io.BytesIO(zf.read(member)), names).load()
        else:
            with open(path, "rb") as fh:
                reader = _GlobalLister(fh, names)
                for _ in range(4):  # magic number, protocol, system info, then the object
                    reader.load()
    except Exception:  # a corrupt or truncated pickle ends the walk; what was named so far stands
        pass
    return list(dict.fromkeys(names))


class _StandIn:
    """An inert object standing for any global or object a pickle rebuilds."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _StandIn:
        return _StandIn()

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass

    def add(self, value: Any) -> None:
        pass


class _GlobalLister(pickle.Unpickler):
    """An unpickler that records the globals it is asked for and hands back stand-ins."""

    def __init__(self, file: Any, names: list[str]) -> None:
        super().__init__(file)
        self.names = names

    def find_class(self, module: str, name: str) -> type:
        self.names.append(f"{module}.{name}")
        return _StandIn

    def persistent_load(self, pid: Any) -> _StandIn:
        return _StandIn()


def _refusal(path: Path, message: str) -> XrayfmError:
    """The error for a pickle a weights-only load refused, from PyTorch's ``message`` and the
    globals the file names: code it would run, a class it needs, or an unreadable file."""
    found = _REFUSED_GLOBAL.search(message)
    named = [_qualified(found.group(1))] if found else []
    code = next((n for n in [*named, *map(_qualified, pickled_globals(path))] if runs_code(n)), None)
    if code is not None:
        return XrayfmError(
            f"{path}: refused: the file asks to run code ({code}) when unpickled; it is not a plain weight file "
            "and nothing in it was run"
        )
    if not named:
        return XrayfmError(f"{path}: not a readable PyTorch weight file (corrupt or another format)")
    return XrayfmError(
        f"{path}: the file needs unsafe unpickling: it stores Python objects, not only tensors (it names "
        f"{named[0]}). Load it only if you trust its source, with create_model(..., allow_unsafe=True)"
    )
