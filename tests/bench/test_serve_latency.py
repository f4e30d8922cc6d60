"""bench/serve_latency.py: its load generator against a real server, the raw engine's timings, the
server-to-engine ratios and their targets, and (slow) a whole tiny run writing the JSON."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch
from bench_modules import load_bench

from xrayfm.models import create_model
from xrayfm.models.task_checkpoint import save_task_model
from xrayfm.models.task_model import XrayModel


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench("serve_latency")


@pytest.fixture(scope="module")
def model_dir(bench: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("bench") / "model"
    model = XrayModel(create_model("eva_x_tiny_patch16", num_classes=0, img_size=32), [bench.FINDINGS])
    save_task_model(model, out, arch="eva_x_tiny_patch16", model_kwargs={"img_size": 32}, info={})
    return out


@pytest.fixture(scope="module")
def port(bench: ModuleType, model_dir: Path) -> Iterator[int]:
    import uvicorn

    from xrayfm.serve.app import create_app
    from xrayfm.serve.http_protocol import BoundedHttpToolsProtocol

    port = bench.free_port()
    config = uvicorn.Config(create_app(model_dir, max_batch=4, max_wait_ms=50), host="127.0.0.1", port=port,
                            log_level="warning", http=BoundedHttpToolsProtocol, timeout_keep_alive=1)  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield port
    server.should_exit = True
    thread.join(timeout=10)


@pytest.mark.parametrize("heatmap", [False, True])
def test_the_load_generator_gets_answers_and_records_its_cpu_share(bench: ModuleType, port: int, heatmap: bool) -> None:
    row = bench.measure(port, clients=3, requests=6, heatmap=heatmap, server_pid=os.getpid(), image=64)
    assert row["ok"] == 6 and row["errors"] == 0 and row["heatmap"] is heatmap
    assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] and row["requests_per_s"] > 0
    assert row["mean_batch"] >= 1 and row["client_cpu_s"] > 0
    sizes = {int(b): n for b, n in row["batch_sizes"].items()}  # the row's batches, not the warm-up's
    assert sum(b * n for b, n in sizes.items()) == 6 and sum(sizes.values()) == row["batches"]
    assert 0 < row["server_ms_p50"] <= row["p50_ms"]  # the server's own time is inside the client's
    assert row["client_cpu_share"] is None or 0 < row["client_cpu_share"] <= 1
    roles = row["server_cpu_ms_per_request"]  # the server runs in this process here, its lanes named as in serve
    assert roles is None or (set(roles) == {"model", "decode", "event loop", "other"} and min(roles.values()) >= 0)


def test_body_and_multipart_requests_get_the_same_answer(bench: ModuleType, port: int) -> None:
    conn, image = bench.Connection(port), bench.png(1, 40)
    answers = [json.loads(conn.request(bench.predict_request(image, False, upload))[1]) for upload in bench.UPLOADS]
    conn.close()
    assert answers[0]["probabilities"] == answers[1]["probabilities"] and answers[0]["image"]["width"] == 40
    assert bench.predict_request(image, False, "body").split(b"\r\n\r\n", 1)[1] == image


def test_a_keep_alive_connection_survives_the_servers_idle_close(bench: ModuleType, port: int) -> None:
    conn = bench.Connection(port)
    request = bench.predict_request(bench.png(0, 48), heatmap=False)
    status, body = conn.request(request)
    assert status == 200 and "probabilities" in json.loads(body)
    time.sleep(1.6)  # past the server's keep-alive timeout: it closed the connection
    status, body = conn.request(request)
    assert status == 200 and json.loads(body)["image"]["width"] == 48
    conn.close()


def test_engine_times_each_kind_per_batch_size(bench: ModuleType, model_dir: Path) -> None:
    engine = bench.Engine(model_dir, "torch", 32, repeats=1)
    for kind in ("forward", "forward_backward", "heatmap"):
        assert engine.ms(kind, 1) > 0 and engine.ms(kind, 2) > 0
    assert set(engine.table()) == {"forward", "forward_backward", "heatmap"}
    assert set(engine.table()["heatmap"]) == {"bs1_ms", "bs2_ms"}
    assert all(p.requires_grad for p in engine.model.parameters())
    assert engine.lanes_per_s(2, 2) > 0  # two passes side by side, as the server's lanes
    assert engine.table()["lanes"] == {"bs2_ms_per_image": pytest.approx(1000 / engine.lanes_per_s(2, 2), rel=0.01)}


class FakeEngine:
    """Raw-engine times in ms: forward 10 ms per image, forward+backward 30, heatmap 12; each fresh timing
    ``drift`` times the last (the machine slowing down between rounds)."""

    def __init__(self, drift: float = 1.0) -> None:
        self.drift, self.scale, self.fresh = drift, 1.0, 0

    def ms(self, kind: str, batch: int, fresh: bool = False) -> float:
        if fresh:
            self.fresh += 1
        return {"forward": 10.0, "forward_backward": 30.0, "heatmap": 12.0}[kind] * batch * self.scale

    def lanes_per_s(self, batch: int, lanes: int, fresh: bool = False) -> float:  # side by side: 130 images/s
        return 130.0 / self.scale

    def next_round(self) -> None:
        self.scale *= self.drift


def row(clients: int, heatmap: bool, p50: float, rate: float, batch: float) -> dict:
    return {"clients": clients, "heatmap": heatmap, "p50_ms": p50, "requests_per_s": rate, "mean_batch": batch}


def check(bench: ModuleType, server_row: dict, rounds: int = 1, **kw) -> dict:
    engine = FakeEngine(**kw)
    done = []
    for _ in range(rounds):
        done.append(bench.paired_round(server_row, engine, max_batch=16))
        engine.next_round()
    assert engine.fresh >= rounds  # every round timed the engine anew
    return bench.target(server_row["heatmap"], server_row["clients"], done)


def test_paired_targets_set_the_server_beside_the_engine(bench: ModuleType) -> None:
    plain = check(bench, row(1, False, 12.5, 80, 1))
    assert plain["server_minus_raw_ms"] == 2.5 and plain["met"] is True and plain["measure"] == "p50 latency"
    throughput = check(bench, row(16, False, 95.0, 91, 7.6))  # the server formed batches of 8: 100 images/s raw
    assert throughput["raw_images_per_s"] == {"bs8": 100.0, "bs16": 100.0} and throughput["ratio"] == 0.91
    assert throughput["met"] is True and "ratio_to_raw_lanes" not in throughput  # a server with one lane
    heat = check(bench, row(1, True, 40.0, 25, 1))
    assert heat["ratio"] == pytest.approx(40 / 30, abs=1e-3) and heat["met"] is False
    assert heat["ratio_to_engine_heatmap"] == pytest.approx(40 / 12, abs=1e-3)
    heat_rate = check(bench, row(16, True, 20.0, 26, 8.0))
    assert heat_rate["ratio"] == pytest.approx(26 / (1000 / 30), abs=1e-3) and heat_rate["met"] is False
    laned = check(bench, {**row(16, False, 95.0, 91, 7.6), "lanes": 2})
    assert laned["ratio"] == 0.91 and laned["raw_lanes"] == 2 and laned["ratio_to_raw_lanes"] == 0.7
    slow = check(bench, row(1, False, 13.5, 70, 1))
    assert slow["met"] is False  # 3.5 ms over the raw forward


def test_the_raw_engine_runs_the_batches_the_server_formed(bench: ModuleType) -> None:
    """Per-image time falling with the batch (20 ms alone, 10 ms in fours): the raw rate is that of the same
    batches run one after another, which the rate at their mean size overstates."""
    ms = {1: 20.0, 2: 30.0, 4: 40.0}
    assert bench.rate_at_sizes({1: 4, 4: 1}, ms.__getitem__) == round(8 * 1000 / (4 * 20 + 40), 2)  # 66.67
    assert bench.rate_at_sizes({4: 3}, ms.__getitem__) == 100.0
    with pytest.raises(ValueError, match="no batches"):
        bench.rate_at_sizes({}, ms.__getitem__)
    assert bench.formed_sizes({"batch_sizes": {"1": 2, "4": 1}}, {"batch_sizes": {"1": 5, "2": 1, "4": 1}}) == {
        "1": 3, "2": 1}  # fmt: skip
    assert bench.formed_sizes({}, {}) == {}  # a server without the counter


class CurvedEngine(FakeEngine):
    """Forward passes of ``b`` images take 20 sqrt(b) ms: larger batches are cheaper per image."""

    def ms(self, kind: str, batch: int, fresh: bool = False) -> float:
        super().ms(kind, batch, fresh)
        return 20.0 * batch**0.5


def test_the_throughput_target_divides_by_the_raw_rate_at_the_batches_formed(bench: ModuleType) -> None:
    server_row = {**row(16, False, 95.0, 100.0, 4.0), "batch_sizes": {"1": 4, "7": 4}}  # mean 4, half alone
    got = bench.paired_round(server_row, CurvedEngine(), max_batch=16)
    mix = 32 * 1000 / (4 * 20 + 4 * 20 * 7**0.5)  # 109.7 images/s: more than at bs4 (100), less than at bs7
    assert got["raw_images_per_s_at_sizes"] == round(mix, 2) and got["ratio"] == round(100 / mix, 3)
    assert got["raw_images_per_s"] == {"bs1": 50.0, "bs4": 100.0, "bs7": 132.29, "bs16": 200.0}
    assert got["ratio_at_mean_batch"] == 1.0 and got["batch_sizes"] == {"1": 4, "7": 4}
    older = bench.paired_round(row(16, False, 95.0, 100.0, 4.0), CurvedEngine(), max_batch=16)  # no counter
    assert older["ratio"] == older["ratio_at_mean_batch"] == 1.0


def test_rounds_give_the_median_and_the_range(bench: ModuleType) -> None:
    """The engine slowing by 10% per round moves each round's ratio; the median round decides."""
    got = check(bench, row(16, False, 95.0, 91, 7.6), rounds=3, drift=1.1)
    per_round = [r["ratio"] for r in got["rounds"]]
    assert per_round == sorted(per_round) and len(set(per_round)) == 3
    assert got["ratio"] == per_round[1] and got["ratio_range"] == [per_round[0], per_round[2]]
    assert got["raw_images_per_s"]["bs8"] == got["rounds"][1]["raw_images_per_s"]["bs8"]


@pytest.mark.slow  # two server processes, each importing torch; the ONNX export
def test_a_tiny_run_writes_engine_server_and_ratios(bench: ModuleType, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    out = tmp_path / "serve.json"
    argv = ["--archs", "eva_x_tiny_patch16", "--size", "32", "--image", "64", "--requests", "4", "--clients", "1,2",
            "--max-batch", "2", "--repeats", "1", "--rounds", "2", "--out", str(out)]  # fmt: skip
    assert bench.main(argv) == 0
    report = json.loads(out.read_text())
    measured = set(report["precisions"])
    assert {"torch/fp32", "onnx/fp32", "onnx/int8"} <= measured and "onnx/bf16" not in measured
    assert ("torch/bf16" in measured) != any(s.startswith("torch/bf16: bf16 refused") for s in report["skipped"])
    fp32 = [r for r in report["runs"] if r["precision"] == "fp32"]
    assert {r["backend"] for r in fp32} == {"torch", "onnx"} and len(fp32) == 12 and report["upload"] == "body"
    other = [r for r in fp32 if r["upload"] == "multipart"]  # plain /predict at 1 and 2 clients, per backend
    assert sorted((r["backend"], r["clients"], r["heatmap"]) for r in other) == [
        ("onnx", 1, False), ("onnx", 2, False), ("torch", 1, False), ("torch", 2, False)]  # fmt: skip
    reduced = [r for r in report["runs"] if r["precision"] != "fp32"]
    assert len(reduced) == 2 * (len(measured) - 2) and not any(r["heatmap"] for r in reduced)  # heatmaps stay fp32
    assert all(r["upload"] == "body" for r in reduced)
    assert all(r["errors"] == 0 for r in report["runs"])
    expected = {(heatmap, measure) for heatmap in (False, True) for measure in ("p50 latency", "throughput")}
    for side in report["engine"]:
        if side["precision"] == "fp32":
            assert set(side["engine"]) - {"lanes"} == {"forward", "forward_backward", "heatmap"}
            assert {(r["heatmap"], r["measure"]) for r in side["ratios"]} == expected
            assert all(len(r["rounds"]) == 2 for r in side["ratios"])
            continue
        assert set(side["engine"]) - {"lanes"} == {"forward"} and side["speed_vs_fp32"]["against"].endswith("/fp32")
        assert set(side["speed_vs_fp32"]) == {
            "against",
            "raw_forward_bs1",
            "raw_forward_bs2",
            "server_p50_1_client",
            "server_requests_per_s_2_clients",
        }
    (int8,) = [s for s in report["engine"] if s["precision"] == "int8"]
    assert int8["quantization"]["method"].startswith("static")  # calibrated on the recorded phantom set
    assert "client_cpu_share" in report["load"] and report["provenance"]["machine"]["cores"] >= 1


def test_configurations_measure_each_precision_on_its_backend(bench: ModuleType, monkeypatch) -> None:
    monkeypatch.setattr(bench, "check_precision", lambda precision, backend, device: None)
    configs, skipped = bench.configurations(["torch", "onnx"], ["fp32", "bf16", "int8"])
    assert configs == [("torch", "fp32"), ("onnx", "fp32"), ("torch", "bf16"), ("onnx", "int8")] and not skipped

    def no_bf16(precision: str, backend: str, device: str) -> None:
        if precision == "bf16":
            raise bench.PrecisionError("bf16 refused: this machine lacks AVX-512-BF16")

    monkeypatch.setattr(bench, "check_precision", no_bf16)
    configs, skipped = bench.configurations(["torch"], ["fp32", "bf16"])
    assert configs == [("torch", "fp32")] and skipped == ["torch/bf16: bf16 refused: this machine lacks AVX-512-BF16"]
    monkeypatch.setattr(bench, "check_precision", lambda precision, backend, device: None)
    configs, skipped = bench.configurations(["torch", "onnx"], ["fp32", "int8"], "cuda")  # a GPU run: PyTorch only
    assert configs == [("torch", "fp32")] and [s.split(":")[0] for s in skipped] == ["onnx/fp32", "onnx/int8"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_a_gpu_run_on_a_machine_without_one_stops_in_one_line(bench: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--device cuda: CUDA is not available here"):
        bench.main(["--device", "cuda", "--out", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()


def test_speed_vs_fp32_divides_fp32_times_by_the_reduced_ones(bench: ModuleType) -> None:
    def side(backend: str, precision: str, bs1: float, p50: float, rate: float) -> dict:
        ratios = [{"heatmap": False, "clients": 1, "server_p50_ms": p50},
                  {"heatmap": False, "clients": 16, "server_requests_per_s": rate}]  # fmt: skip
        return {"backend": backend, "precision": precision, "ratios": ratios,
                "engine": {"forward": {"bs1_ms": bs1, "bs16_ms": bs1 * 8}}}  # fmt: skip

    sides = {("torch", "fp32"): side("torch", "fp32", 20.0, 25.0, 50.0),
             ("onnx", "fp32"): side("onnx", "fp32", 16.0, 22.0, 48.0),
             ("onnx", "int8"): side("onnx", "int8", 8.0, 14.0, 72.0)}  # fmt: skip
    out = {(s["backend"], s["precision"]): s for s in bench.speed_vs_fp32(sides)}
    assert "speed_vs_fp32" not in out["torch", "fp32"]
    assert out["onnx", "int8"]["speed_vs_fp32"] == {
        "against": "onnx/fp32", "raw_forward_bs1": 2.0, "raw_forward_bs16": 2.0, "server_p50_1_client": 1.571,
        "server_requests_per_s_16_clients": 1.5}  # fmt: skip


def test_the_rate_under_load_leaves_out_ramp_up_and_drain(bench: ModuleType) -> None:
    # (latency, status, server ms, completion time): 2 clients; both busy from t=1 (the later first answer)
    # to t=5 (the first client out of requests): 8 successful answers and an error in that window
    answers = [(0.1, 200, 1.0, t) for t in (0.5, 1.0, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 4.9, 6, 7)]
    answers.append((0.1, 503, None, 4.8))
    assert bench.steady_rate(answers, firsts=[0.5, 1.0], quits=[5.0, 7.0], wall=7.0) == round(8 / 4, 2)
    # too few answers inside the window (under 8, or under 4 a client): the overall rate (successes / wall time)
    assert bench.steady_rate(answers, firsts=[0.5, 4.0], quits=[5.0, 7.0], wall=7.0) == round(12 / 7, 2)
    assert bench.steady_rate(answers, firsts=[0.5, 1.0, 1.0], quits=[5.0, 7.0, 7.0], wall=7.0) == round(12 / 7, 2)
