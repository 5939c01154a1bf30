#!/usr/bin/env python3
"""Checks the grpcurl calls in examples/README.md against the contracts.

Every `grpcurl` command in the README's ```sh blocks is parsed as a shell
command; its method (or the symbol it describes) must exist in proto/, and
its -d body (inline or a <<EOF heredoc) must parse as that method's request
in the proto3 JSON mapping, as grpcurl reads it.

With --run, the calls are also made, in the README's order, against a fresh
stack (the README's job id and version numbers assume one): localhost:7400
to 7403 become the addresses given. Each must succeed, except a block that an
"ERROR: Code: X" block follows, which must fail with X. Calls to the server
and the monitor are retried for a few seconds while they answer NOT_FOUND or
UNAVAILABLE (the model not loaded yet, no log yet): a person reading the
README is slower than this script.

Exits 1 naming each call that is wrong.
"""

import argparse
import json
import os
import re
import shlex
import sys
import tempfile
import time

import lifecycle

# Served by every daemon but not part of proto/ (tonic-health's contract).
EXTERNAL = ("grpc.health.v1.",)
PORTS = {"7400": "registry", "7401": "trainer", "7402": "server", "7403": "monitor"}


def calls(markdown):
    """(argv, heredoc body, expected error code name or None) per command."""
    blocks = list(re.finditer(r"^```(\w*)\n(.*?)^```", markdown, re.S | re.M))
    for k, b in enumerate(blocks):
        if b.group(1) != "sh":
            continue
        expect = None
        if k + 1 < len(blocks):
            m = re.match(r"ERROR:\n\s+Code: (\w+)", blocks[k + 1].group(2))
            if m:
                expect = m.group(1)
        lines = b.group(2).replace("\\\n", " ").split("\n")
        i = 0
        while i < len(lines):
            line, heredoc = lines[i], None
            # A single-quoted argument may span lines: join until balanced.
            while line.count("'") % 2:
                i += 1
                line += "\n" + lines[i]
            m = re.search(r"<<(\w+)\s*$", line)
            if m:
                body = []
                i += 1
                while lines[i] != m.group(1):
                    body.append(lines[i])
                    i += 1
                line, heredoc = line[:m.start()], "\n".join(body)
            i += 1
            if line.strip():
                argv = shlex.split(line)
                if argv[0] == "grpcurl":
                    yield argv, heredoc, expect


def camel(code_name):
    """grpc.StatusCode.INVALID_ARGUMENT -> InvalidArgument (grpcurl's spelling)."""
    return "".join(w.capitalize() for w in code_name.split("_"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", nargs=4, metavar=("REGISTRY", "TRAINER", "SERVER", "MONITOR"),
                    help="also make the calls against this fresh stack (HOST:PORT each)")
    args = ap.parse_args()
    readme = os.path.join(lifecycle.REPO, "examples", "README.md")
    with open(readme) as f:
        text = f.read()
    with tempfile.TemporaryDirectory(prefix="evergreen-stubs-") as out:
        files = lifecycle.generate_stubs(os.path.join(lifecycle.REPO, "proto"), out)
        for f in files:  # registers every file in the default pool
            __import__(f[:-len(".proto")].replace("/", ".") + "_pb2")
        failures, checked, ran = check(list(calls(text)), args.run)
    for f in failures:
        print(f"check_readme: {f}", file=sys.stderr)
    print(f"check_readme: {checked} grpcurl calls in examples/README.md checked against proto/"
          + (f", {ran} made against the stack" if args.run else "") + f"; {len(failures)} wrong")
    return 1 if failures or checked == 0 else 0


def check(commands, stack):
    import grpc
    from google.protobuf import descriptor_pool, json_format, message_factory

    pool = descriptor_pool.Default()
    channels = {}
    if stack:
        channels = {port: grpc.insecure_channel(a) for port, a in zip(PORTS, stack)}
    failures, checked, ran = [], 0, 0
    monitor_called = False
    for argv, heredoc, expect in commands:
        call = " ".join(argv)
        short = call if len(call) < 100 else call[:97] + "..."
        args = [a for a in argv[1:] if not a.startswith("-")]
        if "list" in args:
            continue
        if "describe" in args:
            symbol, found = args[-1], False
            for find in (pool.FindServiceByName, pool.FindMessageTypeByName):
                try:
                    find(symbol)
                    found = True
                except KeyError:
                    pass
            if not found:
                failures.append(f"{short}: no service or message {symbol} in proto/")
            checked += 1
            continue
        target, method = argv[-2], argv[-1]
        if method.startswith(EXTERNAL):
            continue
        body = argv[argv.index("-d") + 1] if "-d" in argv else "{}"
        if body == "@":
            body = (heredoc or "").replace("$PWD", lifecycle.REPO)
        checked += 1
        try:
            service, name = method.rsplit("/", 1)
            desc = pool.FindServiceByName(service).FindMethodByName(name)
            if desc is None:
                raise KeyError(f"no method {name} in {service}")
            request = message_factory.GetMessageClass(desc.input_type)()
            json.loads(body)  # grpcurl wants strict JSON
            json_format.Parse(body, request)
        except (KeyError, ValueError, json_format.ParseError) as e:
            failures.append(f"{short}: {type(e).__name__}: {e}")
            continue
        if not stack:
            continue

        # --run: make the call.
        port = target.rsplit(":", 1)[-1]
        if port not in channels:
            failures.append(f"{short}: address {target} is not one of localhost:7400-7403")
            continue
        headers = [tuple(p.strip() for p in argv[i + 1].split(":", 1))
                   for i, a in enumerate(argv) if a == "-H"]
        response_cls = message_factory.GetMessageClass(desc.output_type)
        kind = channels[port].unary_stream if desc.server_streaming else channels[port].unary_unary
        stub = kind(f"/{service}/{name}", request_serializer=request.__class__.SerializeToString,
                    response_deserializer=response_cls.FromString)
        if PORTS[port] == "monitor" and not monitor_called:
            # A reader is slower than this script: give the server's
            # prediction log (flushed every 200 ms) time to reach the monitor
            # before the labels and reports that need it.
            time.sleep(1)
            monitor_called = True
        deadline = time.monotonic() + (10 if PORTS[port] in ("server", "monitor") else 0)
        while True:
            try:
                got = stub(request, metadata=headers, timeout=60)
                got = list(got) if desc.server_streaming else [got]
                error = None
            except grpc.RpcError as e:
                error = e
            # The server loads a promoted model a moment after SetAlias; the
            # monitor knows a version once its first log records arrived.
            if (error is not None and expect is None and time.monotonic() < deadline
                    and error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE)):
                time.sleep(0.1)
                continue
            break
        ran += 1
        if expect is None and error is not None:
            failures.append(f"{short}: failed: {error.code().name}: {error.details()}")
        elif expect is not None and error is None:
            failures.append(f"{short}: succeeded; the README says it fails with {expect}")
        elif expect is not None and camel(error.code().name) != expect:
            failures.append(f"{short}: failed with {camel(error.code().name)}, the README says {expect}")
        else:
            outcome = (f"{camel(error.code().name)}: {error.details()[:60]}..." if error else
                       f"OK, {len(got)} message(s)")
            print(f"  {method}: {outcome}")
    return failures, checked, ran


if __name__ == "__main__":
    sys.exit(main())
