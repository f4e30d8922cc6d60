"""``xrayfm serve --compile``: the server's plain forward passes through ``torch.compile`` (PyTorch backend).

PyTorch's inductor fuses the elementwise work around the matrix products into generated kernels (C++
on a CPU, Triton on a GPU). What it buys on a CPU is measured by ``bench/serve_compile.py`` against the
same server without it (README, "Serving speed"); on a GPU it is not measured yet, and CUDA graphs
(``mode="reduce-overhead"``) are not used: PyTorch records them per thread, and the server compiles on
one thread and serves on others.

How the server uses it:

- One compiled wrapper of the model (its weights are shared, not copied), with a dynamic batch
  dimension: PyTorch keeps one graph for a batch of one and one for any larger batch.
- Compiled before the server answers (:func:`warm_up`): for the heads a default request asks for, at a
  batch of one and of more, at each thread count of the server's lanes (PyTorch guards its graphs on the
  thread count). Inductor's CPU kernels read the thread count when they run (``cpp.dynamic_threads``),
  so the graphs of each count share their generated code.
- Once warm, the process's compiler stance is ``eager_on_recompile``: a pass nothing was compiled for
  (another set of heads) runs the uncompiled model instead of compiling while serving. Compiling
  while another lane ran under bf16 autocast deadlocked the server (seen under 16 clients: the
  tracing thread held the interpreter lock waiting for autocast's cast cache, which the other lane
  held while waiting for the interpreter lock).
- Passes with a detection head, and every heatmap pass (hooks and a backward pass), run the
  uncompiled model.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import nn

from xrayfm.errors import XrayfmError
from xrayfm.models.precision import no_grad_at
from xrayfm.tasks import CLASSIFICATION_KINDS, TaskSpec

#: Batch sizes compiled before serving: PyTorch specialises a batch of one and shares one graph for the rest.
WARM_BATCHES = (1, 2)


def compile_model(model: nn.Module) -> nn.Module:
    """``model`` wrapped by ``torch.compile`` for serving (nothing is compiled until the first call)."""
    import torch._inductor.config as inductor_config

    inductor_config.cpp.dynamic_threads = True  # the graphs of each lane's thread count share generated code
    return torch.compile(model, dynamic=True)


def default_task_sets(tasks: Sequence[TaskSpec]) -> list[list[str]]:
    """The sets of heads a request naming none runs in a plain pass: every classification head at once
    (``/predict``), each segmentation head alone (``/segment``); detection passes are not compiled."""
    classification = sorted(t.name for t in tasks if t.kind in CLASSIFICATION_KINDS)
    return ([classification] if classification else []) + [[t.name] for t in tasks if t.kind == "segmentation"]


@contextlib.contextmanager
def quiet_cuda_search(device: torch.device) -> Iterator[None]:
    """Compiling for a CPU, inductor loads ``torch.utils.cpp_extension``, whose search for a CUDA toolkit warns
    "No CUDA runtime is found" on a machine with a toolkit but no GPU: a misleading line in a CPU server's log."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    if device.type == "cpu":
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def warm_up(
    compiled: nn.Module,
    task_sets: Sequence[Sequence[str]],
    input_size: int,
    precision: str,
    device: torch.device,
    thread_counts: Iterable[int] = (),
) -> None:
    """Compile ``compiled`` for each set of heads at :data:`WARM_BATCHES` (grey (N, 1, S, S) inputs) and each of
    ``thread_counts`` (default: the calling thread's), then turn compiling while serving off (module docstring).

    Raises:
        XrayfmError: Compilation failed (e.g. no C++ compiler for inductor's CPU kernels), with PyTorch's reason.
    """
    own = torch.get_num_threads()
    counts = sorted(set(thread_counts) or {own})
    graphs = len(task_sets) * len(WARM_BATCHES) * len(counts)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, graphs + 8)
    try:
        with torch.compiler.set_stance("default"), quiet_cuda_search(device):
            for threads in counts:
                torch.set_num_threads(threads)
                for tasks, batch in itertools.product(task_sets, WARM_BATCHES):
                    with no_grad_at(precision, device):
                        compiled(torch.zeros(batch, 1, input_size, input_size, device=device), tasks=list(tasks))
    except Exception as exc:  # torch._dynamo wraps the backend's error (compiler missing, op unsupported)
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise XrayfmError(f"--compile: torch.compile failed ({reason}); serve without --compile") from exc
    finally:
        torch.set_num_threads(own)
    torch.compiler.set_stance("eager_on_recompile")
