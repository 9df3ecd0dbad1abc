"""Google's protobuf (the `protobuf` package from PyPI, upb inside) on the other side of
tests/proto_python.rs: builds plex.Message from proto/plex.proto at run time, without protoc,
then answers one line per request line on stdin:

    decode HEX                  ->  ok SEQ URI_HEX BODY_HEX GROUPS   or   error MESSAGE
    encode SEQ URI_HEX BODY_HEX ->  HEX

Fields are separated by one space; an empty string is an empty field. GROUPS counts the
unknown fields of the group wire type that upb skipped.

With `client HOST PORT`, it is instead a client of a running server speaking protobuf over
the framed protocol (a 4-byte big-endian length, then the message), one line per command:

    send URI_HEX BODY_HEX  ->  sent
    recv                   ->  msg SEQ URI_HEX BODY_HEX OFFSET EPOCH_HEX

Usage: python3 plex_proto.py PATH/TO/plex.proto [client HOST PORT]
"""

import socket
import struct

import re
import sys

try:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, unknown_fields
    from google.protobuf.message import DecodeError
except ImportError as e:
    sys.exit(f"plex_proto.py needs the Python package `protobuf`: pip install protobuf ({e})")

FieldProto = descriptor_pb2.FieldDescriptorProto
SCALARS = {
    "int64": FieldProto.TYPE_INT64,
    "uint64": FieldProto.TYPE_UINT64,
    "string": FieldProto.TYPE_STRING,
}
FIELD = re.compile(r"(\w+)\s+(\w+)\s*=\s*(\d+)\s*;")


def parse_proto(text, filename):
    """The subset of proto3 that plex.proto uses: a package and messages of scalar fields.
    Anything else is an error rather than something silently left out."""
    text = re.sub(r"//[^\n]*", "", text)
    file = descriptor_pb2.FileDescriptorProto(name=filename)
    rest = text
    syntax = re.search(r'syntax\s*=\s*"(\w+)"\s*;', text)
    if not syntax or syntax.group(1) != "proto3":
        raise ValueError("not a proto3 file")
    file.syntax = "proto3"
    rest = rest.replace(syntax.group(0), "")
    package = re.search(r"package\s+([\w.]+)\s*;", text)
    if package:
        file.package = package.group(1)
        rest = rest.replace(package.group(0), "")
    for match in re.finditer(r"message\s+(\w+)\s*\{([^{}]*)\}", text):
        message = file.message_type.add(name=match.group(1))
        for type_name, name, number in FIELD.findall(match.group(2)):
            if type_name not in SCALARS:
                raise ValueError(f"field type {type_name} is not supported here")
            message.field.add(
                name=name,
                number=int(number),
                type=SCALARS[type_name],
                label=FieldProto.LABEL_OPTIONAL,
            )
        if FIELD.sub("", match.group(2)).strip():
            raise ValueError(f"unsupported syntax in message {match.group(1)}")
        rest = rest.replace(match.group(0), "")
    if rest.strip():
        raise ValueError(f"unsupported syntax: {rest.strip()[:60]!r}")
    return file


def main():
    path = sys.argv[1]
    with open(path, encoding="utf-8") as f:
        file = parse_proto(f.read(), "plex.proto")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    Message = message_factory.GetMessageClass(pool.FindMessageTypeByName("plex.Message"))

    if sys.argv[2:3] == ["client"]:
        return client(Message, sys.argv[3], int(sys.argv[4]))

    out = []
    for line in sys.stdin:
        request, *args = line.rstrip("\n").split(" ")
        if request == "decode":
            data = bytes.fromhex(args[0])
            try:
                m = Message.FromString(data)
            except DecodeError as e:
                out.append(f"error {e}")
                continue
            groups = sum(f.wire_type == 3 for f in unknown_fields.UnknownFieldSet(m))
            out.append(f"ok {m.seq} {m.uri.encode().hex()} {m.body.encode().hex()} {groups}")
        elif request == "encode":
            seq, uri, body = args[0], *(bytes.fromhex(a).decode() for a in args[1:3])
            m = Message(seq=int(seq), uri=uri, body=body)
            out.append(m.SerializeToString(deterministic=True).hex())
        else:
            sys.exit(f"unknown request {request!r}")
    sys.stdout.write("".join(line + "\n" for line in out))


def client(Message, host, port):
    conn = socket.create_connection((host, port), timeout=10)

    def read_exact(n):
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                sys.exit("the server closed the connection")
            data += chunk
        return data

    for line in sys.stdin:
        request, *args = line.rstrip("\n").split(" ")
        if request == "send":
            uri, body = (bytes.fromhex(a).decode() for a in args)
            payload = Message(uri=uri, body=body).SerializeToString()
            conn.sendall(struct.pack(">I", len(payload)) + payload)
            print("sent", flush=True)
        elif request == "recv":
            while True:
                (length,) = struct.unpack(">I", read_exact(4))
                if length:  # an empty frame is a keep-alive
                    break
            m = Message.FromString(read_exact(length))
            fields = [m.uri.encode().hex(), m.body.encode().hex(), str(m.offset)]
            print("msg", m.seq, *fields, m.epoch.encode().hex(), flush=True)
        else:
            sys.exit(f"unknown command {request!r}")


if __name__ == "__main__":
    main()
