"""Shards: round trip against the adapters, manifest and checksums, resumable builds, inspect, real data."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import xrayfm.data.shards as shards
from xrayfm.data.phantom_io import write_phantom_dataset
from xrayfm.data.pool import build_pool
from xrayfm.data.shard_format import ShardDataset
from xrayfm.data.shards import build_shards, inspect_shards, shard_shape
from xrayfm.data.transforms import Resize
from xrayfm.errors import DatasetError, ImageReadError, MissingSplitError, XrayfmError

NARROW = "?label_columns=nodule,effusion&mask_columns=heart_mask&mask_classes=heart&boxes_file=None"


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("shards")
    a = write_phantom_dataset(base / "a", n=10, seed=0, size=64)
    return a, write_phantom_dataset(base / "b", n=6, seed=1, size=64)


def _sources(phantoms: tuple[Path, Path]) -> list[str]:
    a, b = phantoms
    return [f"phantom:{a}", f"csv:{b}{NARROW}"]  # the csv source's labels are nan for 3 of the 5 classes


def _by_key(ds) -> dict[tuple[str, str], dict]:
    return {(s["meta"]["source"], s["meta"]["id"]): s for s in (ds[i] for i in range(len(ds)))}


def test_shard_shape() -> None:
    assert shard_shape(100, 200, 50, "shorter") == (50, 100)
    assert shard_shape(300, 150, 50, "shorter") == (100, 50)
    assert shard_shape(40, 80, 50, "shorter") == (40, 80)  # never enlarged
    assert shard_shape(40, 80, 50, "square") == (50, 50)


@pytest.mark.parametrize(("bits", "encoding"), [(8, "png"), (16, "raw")])
def test_round_trip_matches_the_resized_pool(phantoms, tmp_path: Path, bits: int, encoding: str) -> None:
    pool = build_pool(_sources(phantoms), dedupe="none")
    build_shards(pool, tmp_path / "out", size=48, bits=bits, encoding=encoding, part_size=4)
    for split in ("train", "val", "test"):
        ref = {(r.meta["source"], r.meta["id"]): i for i, r in enumerate(pool.records) if r.meta["split"] == split}
        got = _by_key(ShardDataset(tmp_path / "out", split))
        assert set(got) == set(ref)
        for key, s in got.items():
            want = Resize(48)(pool[ref[key]])
            assert s["image"].dtype == torch.float32 and s["image"].shape == (1, 48, 48)
            assert (s["image"] - want["image"]).abs().max() <= 0.5 / (2**bits - 1) + 1e-6
            assert torch.equal(s["mask"], want["mask"])
            assert torch.equal(s["labels"].isnan(), want["labels"].isnan())
            assert torch.equal(s["labels"].nan_to_num(-1), want["labels"].nan_to_num(-1))
            assert ("boxes" in s) == ("boxes" in want)
            if "boxes" in s:
                assert torch.allclose(s["boxes"], want["boxes"]) and torch.equal(s["box_labels"], want["box_labels"])
            assert s["meta"]["original_size"] == [64, 64] and s["meta"]["size"] == [48, 48]
            assert s["meta"]["split"] == split and s["meta"]["patient_id"] == pool.records[ref[key]].meta["patient_id"]
    assert any(s["labels"].isnan().any() for s in got.values())


def test_manifest_counts_checksums_and_verify(phantoms, tmp_path: Path) -> None:
    out = tmp_path / "out"
    manifest = build_shards(_sources(phantoms), out, size=32, dedupe="none", part_size=3)
    pool = build_pool(_sources(phantoms), dedupe="none")
    for split, c in manifest["counts"].items():
        records = [r for r in pool.records if r.meta["split"] == split]
        assert c["total"] == len(records) == len(ShardDataset(out, split))
        assert c["per_source"] == {
            s: sum(r.meta["source"] == s for r in records)
            for s in ("phantom", "csv")
            if any(r.meta["source"] == s for r in records)
        }
    assert manifest["total"] == len(pool) and manifest["complete"]
    assert [s["adapter"] for s in manifest["config"]["sources"]] == ["phantom", "csv"]
    assert manifest["config"]["sources"][1]["options"]["mask_columns"] == "heart_mask"
    assert manifest["versions"]["litdata"] and manifest["config"]["size"] == 32 and manifest["config"]["bits"] == 8
    assert json.loads((out / "manifest.json").read_text()) == json.loads(json.dumps(manifest, default=str))
    chunks = [(name.split("/")[0], c) for name, p in manifest["parts"].items() for c in p["chunks"]]
    assert len(manifest["parts"]) > 3  # several parts per split
    for split, c in chunks:
        assert hashlib.sha256((out / split / c["filename"]).read_bytes()).hexdigest() == c["sha256"]
    summary = inspect_shards(out, verify=True)
    assert summary["problems"] == [] and summary["verified"] == len(chunks) == summary["chunks"]
    assert summary["counts"] == manifest["counts"] and summary["bits"] == 8 and summary["size"] == 32
    split, c = chunks[0]
    with open(out / split / c["filename"], "ab") as fh:
        fh.write(b"\0")
    assert inspect_shards(out, verify=True)["problems"] == [f"{split}/{c['filename']} does not match its SHA-256 "
                                                            "(altered or truncated)"]  # fmt: skip


def test_interrupted_build_resumes_without_rewriting_finished_parts(phantoms, tmp_path: Path, monkeypatch) -> None:
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    sources = _sources(phantoms)[:1]
    calls = {"n": 0}
    real = shards.encode_sample

    def dies_in_part_two(sample, **kw):
        calls["n"] += 1
        if calls["n"] == 4:  # 3 samples per part: the 2nd part dies half-written
            raise KeyboardInterrupt
        return real(sample, **kw)

    monkeypatch.setattr(shards, "encode_sample", dies_in_part_two)
    with pytest.raises(KeyboardInterrupt):
        build_shards(sources, out, size=32, part_size=3)
    monkeypatch.setattr(shards, "encode_sample", real)
    manifest = json.loads((out / "manifest.json").read_text())
    assert not manifest["complete"] and list(manifest["parts"]) == ["train/0"]
    calls["n"] = 3  # a build killed in its very first sample resumes too
    monkeypatch.setattr(shards, "encode_sample", dies_in_part_two)
    with pytest.raises(KeyboardInterrupt):
        build_shards(sources, tmp_path / "early", size=32, part_size=3)
    monkeypatch.setattr(shards, "encode_sample", real)
    assert build_shards(sources, tmp_path / "early", size=32, part_size=3)["complete"]
    with pytest.raises(DatasetError, match="not finished"):
        ShardDataset(out, "train")
    first = [out / "train" / c["filename"] for c in manifest["parts"]["train/0"]["chunks"]]
    stamps = [(p.stat().st_ino, p.stat().st_mtime_ns) for p in first]
    written = []
    monkeypatch.setattr(shards, "encode_sample", lambda s, **kw: written.append(s["meta"]["id"]) or real(s, **kw))
    resumed = build_shards(sources, out, size=32, part_size=3)
    assert stamps == [(p.stat().st_ino, p.stat().st_mtime_ns) for p in first]
    assert len(written) == resumed["total"] - manifest["parts"]["train/0"]["samples"]
    assert not list(out.rglob(".part-*"))  # no staging folder left behind
    reference = build_shards(sources, fresh, size=32, part_size=3)
    assert {k: [c["sha256"] for c in p["chunks"]] for k, p in resumed["parts"].items()} == {
        k: [c["sha256"] for c in p["chunks"]] for k, p in reference["parts"].items()
    }
    written.clear()
    build_shards(sources, out, size=32, part_size=3)  # finished: nothing rewritten
    assert written == []


def test_out_of_another_build_or_other_files_is_refused(phantoms, tmp_path: Path) -> None:
    build_shards(_sources(phantoms)[:1], tmp_path / "out", size=32)
    with pytest.raises(XrayfmError, match="another build .*size"):
        build_shards(_sources(phantoms)[:1], tmp_path / "out", size=40)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(XrayfmError, match="not a shard folder"):
        build_shards(_sources(phantoms)[:1], tmp_path / "other", size=32)
    with pytest.raises(DatasetError, match="no manifest.json"):
        ShardDataset(tmp_path / "other")
    with pytest.raises(XrayfmError, match="bits"):
        build_shards(_sources(phantoms)[:1], tmp_path / "x", bits=12)


def test_streaming_iteration_sees_every_sample_once(phantoms, tmp_path: Path) -> None:
    build_shards(_sources(phantoms)[:1], tmp_path / "out", size=32, part_size=4, splits=("train",))
    with pytest.raises(MissingSplitError):
        ShardDataset(tmp_path / "out", "test")
    ds = ShardDataset(tmp_path / "out", "train", shuffle=True, seed=3, transform=Resize(16))
    ids = [s["meta"]["id"] for s in ds]
    assert sorted(ids) == sorted(ds[i]["meta"]["id"] for i in range(len(ds))) and len(set(ids)) == len(ds)
    assert next(iter(ds))["image"].shape == (1, 16, 16) and callable(ds.state_dict)


def test_real_pool_of_jsrt_and_nih_into_shards(shared_datasets: Path, tmp_path: Path) -> None:
    jsrt = f"csv:{shared_datasets / 'jsrt_lungs'}?mask_columns=mask&label_columns=nodule&source=jsrt"
    nih = f"csv:{shared_datasets / 'nih_cxr14_sample'}?source=nih"
    manifest = build_shards([jsrt, nih], tmp_path / "out", size=64, splits=("test",))
    per_source = manifest["counts"]["test"]["per_source"]
    assert per_source["jsrt"] == 51 and per_source["nih"] > 0
    ds = ShardDataset(tmp_path / "out", "test")
    labels, mask = ds.task_for("labels"), ds.task_for("mask")
    assert labels.classes[0] == "nodule" and "Atelectasis" in labels.classes and mask.classes == ("mask",)
    samples = [ds[i] for i in range(len(ds))]
    assert all(s["image"].shape == (1, 64, 64) and s["meta"]["original_size"] == [512, 512] for s in samples)
    j = next(s for s in samples if s["meta"]["source"] == "jsrt")
    n = next(s for s in samples if s["meta"]["source"] == "nih")
    assert j["labels"][1:].isnan().all() and not j["labels"][0].isnan() and set(j["mask"].unique().tolist()) <= {0, 1}
    assert (n["mask"] == 255).all() and not n["labels"][labels.classes.index("Atelectasis")].isnan()
    with_boxes = [s for s in samples if "boxes" in s]
    assert all(((s["boxes"] >= 0) & (s["boxes"] <= 64)).all() for s in with_boxes)
    assert float(np.mean([s["image"].mean() for s in samples])) > 0.1


def test_unreadable_files_stop_the_build_or_are_left_out_and_tried_again(phantoms, tmp_path: Path) -> None:
    source = tmp_path / "a"
    shutil.copytree(phantoms[0], source)
    train = [r.image for r in build_pool([f"phantom:{source}"], splits=("train",)).records]
    damaged = train[:3]  # with part_size 3: the whole first part
    originals = {p: p.read_bytes() for p in damaged}
    for p in damaged:
        p.write_bytes(originals[p][:200])
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    with pytest.raises(ImageReadError, match="truncated.*--skip-unreadable.*xrayfm inspect ROOT --check -1"):
        build_shards([f"phantom:{source}"], out, size=32, part_size=3, splits=("train",))
    # the build stopped by a damaged file resumes with the option: the flag is not part of its identity
    manifest = build_shards([f"phantom:{source}"], out, size=32, part_size=3, splits=("train",), skip_unreadable=True)
    left_out = {Path(s["image"]).name for p in manifest["parts"].values() for s in p.get("skipped", ())}
    assert left_out == {p.name for p in damaged} and manifest["skipped"] == 3
    assert manifest["total"] == len(train) - 3 == len(ShardDataset(out, "train")) > 0
    assert any(p["samples"] == 0 and p["chunks"] == [] for p in manifest["parts"].values())  # a part of none
    summary = inspect_shards(out)
    assert len(summary["skipped"]) == 3 and all("truncated" in s["error"] for s in summary["skipped"])
    for p in damaged:  # repaired: a rerun writes the parts that left files out again, and they get in
        p.write_bytes(originals[p])
    repaired = build_shards([f"phantom:{source}"], out, size=32, part_size=3, splits=("train",), skip_unreadable=True)
    reference = build_shards([f"phantom:{source}"], fresh, size=32, part_size=3, splits=("train",))
    assert repaired["skipped"] == 0 and repaired["total"] == len(train) == len(ShardDataset(out, "train"))
    assert {k: [c["sha256"] for c in p["chunks"]] for k, p in repaired["parts"].items()} == {
        k: [c["sha256"] for c in p["chunks"]] for k, p in reference["parts"].items()
    }
