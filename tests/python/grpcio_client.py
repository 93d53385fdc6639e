#!/usr/bin/env python3
"""Interop check: Python grpcio (the reference gRPC implementation's wrapper) against a node.

Generates the `log.v1` stubs from client/proto/log/v1/log.proto at run time (grpc_tools.protoc,
into a temporary directory), then against the node at argv[1] (host:port) runs Produce,
Consume, ProduceStream and ConsumeStream (reading N records, then cancelling) and checks every
answer. On success it prints one JSON line, {"produced": [{"offset": ..., "value": ..., "type":
...}, ...]} (values as UTF-8 text), so the caller can read the same records back with another
client, and exits 0. On failure it prints what was wrong to stderr and exits non-zero.

With `--read-all HOST:PORT` it only reads: unary Consume from offset 0, each call at the offset
after the record before (a read at a control record's offset answers with the next data
record), until OUT_OF_RANGE, and prints {"records": [{"offset": ..., "value": ..., "type": ...},
...]}.

It also lists the node's services through gRPC reflection with grpcio-reflection (which
speaks `grpc.reflection.v1alpha`) and checks that `log.v1.Log` is among them.

Needs grpcio, grpcio-tools and grpcio-reflection: the test that runs it
(`tests/tests/node_api.rs`) installs pinned versions into a virtual environment of its own.
"""

import json
import os
import sys
import tempfile

try:
    import grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )
    from grpc_tools import protoc
except ImportError as err:
    print(
        f"grpcio_client.py: cannot import grpc ({err}); "
        "pip install grpcio grpcio-tools grpcio-reflection",
        file=sys.stderr,
    )
    sys.exit(3)

PROTO_ROOT = os.path.normpath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "client", "proto")
)
PROTO_FILE = "log/v1/log.proto"
# Seconds any one call may take.
CALL_TIMEOUT = 10.0
STREAM_RECORDS = 20
CONSUME_STREAM_READ = 10


class CheckFailed(Exception):
    pass


def check(condition, message):
    if not condition:
        raise CheckFailed(message)


def generate_stubs(out_dir):
    """Compiles the proto into out_dir and imports the generated modules."""
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            os.path.join(PROTO_ROOT, PROTO_FILE),
        ]
    )
    check(code == 0, f"grpc_tools.protoc failed on {PROTO_ROOT}/{PROTO_FILE} (exit {code})")
    sys.path.insert(0, out_dir)
    from log.v1 import log_pb2, log_pb2_grpc  # noqa: E402  (generated just above)

    return log_pb2, log_pb2_grpc


def run(addr, log_pb2, log_pb2_grpc):
    produced = []
    with grpc.insecure_channel(addr) as channel:
        grpc.channel_ready_future(channel).result(timeout=CALL_TIMEOUT)
        stub = log_pb2_grpc.LogStub(channel)

        # Reflection, as grpcio-reflection (v1alpha) sees it.
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
        check("log.v1.Log" in services, f"reflection lists {services}, not log.v1.Log")

        # Produce (unary): offsets are consecutive.
        unary = [(f"python-unary-{i}", i + 1) for i in range(5)]
        offsets = []
        for value, record_type in unary:
            response = stub.Produce(
                log_pb2.ProduceRequest(
                    record=log_pb2.Record(value=value.encode(), type=record_type)
                ),
                timeout=CALL_TIMEOUT,
            )
            offsets.append(response.offset)
            produced.append({"offset": response.offset, "value": value, "type": record_type})
        check(
            offsets == list(range(offsets[0], offsets[0] + len(offsets))),
            f"Produce offsets are not consecutive: {offsets}",
        )

        # Consume (unary): each record as produced.
        for item in produced:
            response = stub.Consume(
                log_pb2.ConsumeRequest(offset=item["offset"]), timeout=CALL_TIMEOUT
            )
            record = response.record
            check(
                record.offset == item["offset"]
                and record.value == item["value"].encode()
                and record.type == item["type"],
                f"Consume({item['offset']}) returned {record!r}, expected {item}",
            )
            check(record.timestamp_ms > 0, f"Consume({item['offset']}): no timestamp")

        # Consume past the end: OUT_OF_RANGE.
        try:
            stub.Consume(
                log_pb2.ConsumeRequest(offset=offsets[-1] + 1000), timeout=CALL_TIMEOUT
            )
            raise CheckFailed("Consume past the end succeeded")
        except grpc.RpcError as err:
            check(
                err.code() == grpc.StatusCode.OUT_OF_RANGE,
                f"Consume past the end: expected OUT_OF_RANGE, got {err.code()}: {err.details()}",
            )

        # ProduceStream: one response per request, in order, consecutive offsets.
        streamed = [f"python-stream-{i}" for i in range(STREAM_RECORDS)]
        requests = (
            log_pb2.ProduceRequest(record=log_pb2.Record(value=value.encode()))
            for value in streamed
        )
        responses = list(stub.ProduceStream(requests, timeout=CALL_TIMEOUT))
        check(
            len(responses) == len(streamed),
            f"ProduceStream: {len(responses)} responses to {len(streamed)} requests",
        )
        stream_offsets = [response.offset for response in responses]
        # Each response's offset must hold its own request's record, and together they must fill
        # the range after the unary records. (That offsets also follow request order is
        # proglog's contract too; tests/tests/node_api.rs checks it.)
        expected_range = list(range(offsets[-1] + 1, offsets[-1] + 1 + len(streamed)))
        check(
            sorted(stream_offsets) == expected_range,
            f"ProduceStream offsets do not fill {expected_range[0]}..={expected_range[-1]}: "
            f"{stream_offsets}",
        )
        for offset, value in zip(stream_offsets, streamed):
            record = stub.Consume(
                log_pb2.ConsumeRequest(offset=offset), timeout=CALL_TIMEOUT
            ).record
            check(
                record.value == value.encode(),
                f"ProduceStream acknowledged {value!r} at offset {offset}, "
                f"which holds {record.value!r}",
            )
            produced.append({"offset": offset, "value": value, "type": 0})
        produced.sort(key=lambda item: item["offset"])

        # ConsumeStream: read some records from the first offset produced, then cancel.
        call = stub.ConsumeStream(
            log_pb2.ConsumeRequest(offset=offsets[0]), timeout=CALL_TIMEOUT
        )
        read = []
        for response in call:
            read.append(response.record)
            if len(read) == CONSUME_STREAM_READ:
                break
        call.cancel()
        check(
            len(read) == CONSUME_STREAM_READ,
            f"ConsumeStream ended after {len(read)} records",
        )
        for record, item in zip(read, produced):
            check(
                record.offset == item["offset"] and record.value == item["value"].encode(),
                f"ConsumeStream returned offset {record.offset} value {record.value!r}, "
                f"expected {item}",
            )
        check(
            call.code() == grpc.StatusCode.CANCELLED,
            f"ConsumeStream after cancel: expected CANCELLED, got {call.code()}",
        )
    return produced


def read_all(addr, log_pb2, log_pb2_grpc):
    """Every record from offset 0 to the end, by unary Consume, as a proglog client reads."""
    records = []
    offset = 0
    with grpc.insecure_channel(addr) as channel:
        grpc.channel_ready_future(channel).result(timeout=CALL_TIMEOUT)
        stub = log_pb2_grpc.LogStub(channel)
        while True:
            try:
                response = stub.Consume(
                    log_pb2.ConsumeRequest(offset=offset), timeout=CALL_TIMEOUT
                )
            except grpc.RpcError as err:
                if err.code() == grpc.StatusCode.OUT_OF_RANGE:
                    return records
                raise
            record = response.record
            check(
                record.offset >= offset,
                f"Consume({offset}) answered with the earlier offset {record.offset}",
            )
            records.append(
                {
                    "offset": record.offset,
                    "value": record.value.decode(errors="replace"),
                    "type": record.type,
                }
            )
            offset = record.offset + 1


def main():
    args = sys.argv[1:]
    mode = run
    if args[:1] == ["--read-all"]:
        mode = read_all
        args = args[1:]
    if len(args) != 1:
        print("usage: grpcio_client.py [--read-all] HOST:PORT", file=sys.stderr)
        return 2
    addr = args[0]
    with tempfile.TemporaryDirectory(prefix="proglog-py-stubs-") as out_dir:
        try:
            log_pb2, log_pb2_grpc = generate_stubs(out_dir)
            result = mode(addr, log_pb2, log_pb2_grpc)
        except CheckFailed as err:
            print(f"grpcio_client.py: check failed against {addr}: {err}", file=sys.stderr)
            return 1
        except grpc.RpcError as err:
            print(
                f"grpcio_client.py: call to {addr} failed: {err.code()}: {err.details()}",
                file=sys.stderr,
            )
            return 1
        except grpc.FutureTimeoutError:
            print(f"grpcio_client.py: cannot connect to {addr}", file=sys.stderr)
            return 1
    key = "records" if mode is read_all else "produced"
    print(json.dumps({key: result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
