"""Compressed frames: the pure codec (protocols/wire.py), a node's FrameCodec and its counters,
and a workflow with a large result through real processes."""

from __future__ import annotations

import collections
import json
import os
import random
import tracemalloc
import zlib

import lz4.block
import pytest

from protocols import wire
from protocols.wire import COMPRESSED, LZ4, ZLIB, DecodeError, compress, decode_frame, decompress, encode_frame
from protocols.workflow import parse_workflow
from runtime.framing import FrameCodec
from tests.procs import running_cluster, wait_for
from tests.taskfuncs import rows
from tests.test_metrics import http_get, scrape, value

CODECS = [ZLIB, LZ4]
THRESHOLD = 64 * 1024


def large_frame(size: int = 300_000) -> bytes:
    return encode_frame("w1", "tcp://127.0.0.1:1", [(wire.TELL, "worker", "scheduler", 0, {"result": rows(size)})])


def header(codec: int, size: int) -> bytes:
    return bytes((COMPRESSED, codec)) + size.to_bytes(4, "big")


def reason_of(data: bytes, max_bytes: int = wire.DEFAULT_MAX_FRAME_BYTES) -> str:
    with pytest.raises(DecodeError) as error:
        decode_frame(data, max_bytes)
    return error.value.reason


# --------------------------------------------------------------------------- the pure codec


@pytest.mark.parametrize("codec", CODECS)
def test_a_frame_over_the_threshold_travels_compressed_and_decodes_to_the_same(codec):
    raw = large_frame()
    data = compress(raw, THRESHOLD, codec)
    assert data[0] == COMPRESSED and data[1] == codec and len(data) < len(raw) / 2
    assert decompress(data) == raw
    assert decode_frame(data).envelopes[0].body == {"result": rows(300_000)}


def test_under_the_threshold_or_with_it_off_a_frame_goes_raw():
    raw = large_frame(10_000)
    assert compress(raw, len(raw) + 1) is raw
    assert compress(raw, 0) is raw  # 0: compression off
    assert compress(raw, len(raw))[0] == COMPRESSED
    assert decompress(raw) is raw and decode_frame(raw).envelopes[0].body == {"result": rows(10_000)}


@pytest.mark.parametrize("codec", CODECS)
def test_incompressible_data_goes_raw(codec):
    raw = encode_frame("w1", "", [(wire.TELL, "a", "b", 0, random.Random(3).randbytes(200_000))])
    assert compress(raw, THRESHOLD, codec) is raw


@pytest.mark.parametrize("codec, bomb", [
    (ZLIB, zlib.compress(b"\0" * (100 * 1024 * 1024), 9)),  # ~100 KB that expand to 100 MiB
    (LZ4, lz4.block.compress(b"\0" * (100 * 1024 * 1024), store_size=False)),  # ~400 KB
])
def test_a_bomb_is_refused_without_expanding_past_the_limit(codec, bomb):
    # Honest about its size: refused before any work.
    assert reason_of(header(codec, 100 * 1024 * 1024) + bomb) == "compressed_oversize"
    # Lying about it: expanded only up to the size it declares (at most the cap), then refused.
    tracemalloc.start()
    try:
        assert reason_of(header(codec, 1024 * 1024) + bomb, max_bytes=4 * 1024 * 1024) == "bad_compressed"
        assert reason_of(header(codec, 4 * 1024 * 1024) + bomb, max_bytes=4 * 1024 * 1024) == "bad_compressed"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Nowhere near the 100 MiB it holds: the declared size at most, twice over while zlib joins
    # its output buffers.
    assert peak < 3 * 4 * 1024 * 1024, peak


@pytest.mark.parametrize("codec", CODECS)
def test_truncated_garbled_or_mislabelled_compressed_frames_are_refused_with_a_reason(codec):
    raw = large_frame()
    data = compress(raw, THRESHOLD, codec)
    body = data[6:]
    cases = {
        "a lone marker": bytes((COMPRESSED,)),
        "a header cut short": data[:4],
        "a body cut in half": data[:len(data) // 2],
        "no body": data[:6],
        "garbage after a header": header(codec, len(raw)) + os.urandom(5000),
        "a size one too large": header(codec, len(raw) + 1) + body,
        "a size one too small": header(codec, len(raw) - 1) + body,
        "a size of 0": header(codec, 0) + body,
        "an unknown codec": header(9, len(raw)) + body,
        "compressed twice": compress(header(codec, len(raw)) + body + b"\x01" * 200_000, THRESHOLD, codec),
    }
    assert cases["compressed twice"][0] == COMPRESSED
    for what, hostile in cases.items():
        assert reason_of(hostile) == "bad_compressed", what
    flipped = bytearray(data)
    for position in range(6, len(flipped), 997):
        flipped[position] ^= 0x5A
    try:  # lz4 has no checksum: a flipped frame may decompress to bytes msgpack refuses
        decode_frame(bytes(flipped))
    except DecodeError as exc:
        assert exc.reason in ("bad_compressed", "bad_msgpack", "bad_shape", "unknown_record"), exc.reason


def test_zlib_frames_decode_whichever_codec_the_sender_prefers():
    """Every node reads both codecs: a node without lz4 sends zlib (the fallback)."""
    raw = large_frame()
    assert decompress(compress(raw, THRESHOLD, ZLIB)) == decompress(compress(raw, THRESHOLD, LZ4)) == raw
    assert wire.DEFAULT_CODEC == LZ4  # lz4 is a dependency


# --------------------------------------------------------------------------- a node's codec and its counters


def test_the_node_codec_counts_frames_compressed_and_bytes_saved_both_ways():
    counters: collections.Counter = collections.Counter()
    codec = FrameCodec(wire.DEFAULT_MAX_FRAME_BYTES, THRESHOLD, counters)
    envelopes = [(wire.TELL, "worker", "scheduler", 0, {"result": rows(300_000)})]
    data = codec.encode_frame("w1", "", envelopes)
    raw_size = len(encode_frame("w1", "", envelopes))
    assert counters["frames_compressed_out"] == 1
    assert counters["compression_saved_bytes_out"] == raw_size - len(data) > raw_size / 2
    assert codec.decode_frame(data).envelopes[0].body == {"result": rows(300_000)}
    assert counters["frames_compressed_in"] == 1 and counters["compression_saved_bytes_in"] == raw_size - len(data)
    codec.decode_frame(codec.encode_frame("w1", "", [(wire.TELL, "a", "b", 0, "small")]))
    event = codec.encode(("pub", 1, rows(100_000)))  # events compress as frames do
    assert codec.decode(event) == ["pub", 1, rows(100_000)]
    assert counters["frames_compressed_out"] == counters["frames_compressed_in"] == 2

    off = FrameCodec(wire.DEFAULT_MAX_FRAME_BYTES, 0, counters)
    assert off.encode_frame("w1", "", envelopes) == encode_frame("w1", "", envelopes)
    assert off.decode_frame(data).envelopes[0].body == {"result": rows(300_000)}  # it still reads them
    with pytest.raises(ValueError, match="0 \\(off\\) or more"):
        FrameCodec(wire.DEFAULT_MAX_FRAME_BYTES, -1)


def test_a_batch_past_the_receivers_frame_cap_goes_as_several_frames_each_within_it():
    codec = FrameCodec(10_000, 0)
    envelopes = [(wire.TELL, "raft", "raft", 0, b"x" * 3_000) for _ in range(9)]
    frames = codec.encode_frames("m1", "", envelopes)
    assert len(frames) > 1 and all(len(data) <= 10_000 for _, data in frames)
    assert [carried for carried, _ in frames] == [envelopes[:2], envelopes[2:4], envelopes[4:6], envelopes[6:]]
    assert [e.body for _, data in frames for e in codec.decode_frame(data).envelopes] == [b"x" * 3_000] * 9
    big = [(wire.TELL, "raft", "raft", 0, b"x" * 20_000)]  # one envelope past the cap is not split
    assert codec.encode_frames("m1", "", big) == [(big, codec.encode_frame("m1", "", big))]


# --------------------------------------------------------------------------- through real processes

RESULT_WORKFLOW = """
workflow:
  id: wf-large
  tasks:
    - {task_id: big, call: "tests.taskfuncs:rows", args: [300000]}
    - {task_id: sizes, call: "tests.taskfuncs:sizes", dependencies: [big], locality: []}
"""


def counters_of(target: str) -> dict:
    status, body = http_get(target, "/stats")
    assert status == 200
    return json.loads(body)["counters"]


@pytest.mark.integration
def test_a_workflow_with_a_large_result_completes_compressed_and_the_counters_move(tmp_path):
    with running_cluster(tmp_path, masters=3, workers=1, first_port=19010) as (cluster, client):
        view = cluster.wait_healthy(client, voters=3)
        workflow = parse_workflow(RESULT_WORKFLOW)
        client.submit_workflow(workflow)
        status = client.wait_workflow(workflow.workflow_id, timeout_s=60)
        assert status["state"] == "completed", status
        assert status["tasks"]["big"]["result"] == rows(300_000)
        assert status["tasks"]["sizes"]["result"] == {"big": len(rows(300_000))}  # the dependent got it whole

        targets = {name: target for name, _, target in cluster.http_targets()}
        worker = next(name for name, kind, _ in cluster.http_targets() if kind == "worker")
        follower = next(m.node_id for m in cluster.masters if m.node_id != view["leader"])
        # The worker's report came in compressed; the leader sent the result on to its followers
        # (AppendEntries) and the dependent task's assignment compressed.
        leader = wait_for(lambda: (c := counters_of(targets[view["leader"]]))["frames_compressed_out"] >= 2 and c,
                          10, interval_s=0.1, what="the leader's compressed frames out")
        assert leader["frames_compressed_in"] >= 1 and leader["compression_saved_bytes_in"] > 100_000
        assert leader["compression_saved_bytes_out"] > 200_000
        assert counters_of(targets[follower])["frames_compressed_in"] >= 1
        assert counters_of(targets[worker])["frames_compressed_out"] >= 1
        assert not [name for name in leader if name.startswith("bad_frames_")]
        metrics = scrape(targets[view["leader"]])
        assert value(metrics, "agentflow_transport_compressed_frames",
                     "agentflow_transport_compressed_frames_total", direction="in") >= 1
        assert value(metrics, "agentflow_transport_compression_saved_bytes",
                     "agentflow_transport_compression_saved_bytes_total", direction="out") > 200_000
