"""The protoc plugin protocol: CodeGeneratorRequest on stdin, CodeGeneratorResponse on stdout."""
from __future__ import annotations

import sys

from google.protobuf.compiler import plugin_pb2

from . import model, render


def generate(request: plugin_pb2.CodeGeneratorRequest) -> plugin_pb2.CodeGeneratorResponse:
    response = plugin_pb2.CodeGeneratorResponse()
    response.supported_features = plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
    try:
        params = model.parse_parameters(request.parameter)
        built = model.build(request, params)
    except model.ParameterError as e:
        response.error = f"protoc-gen-xymqtt: {e}"
        return response
    except model.SchemaError as e:
        response.error = "\n".join(e.errors)
        return response
    for name, content in render.render(built):
        f = response.file.add()
        f.name = name
        f.content = content
    return response


def main() -> int:
    request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
    sys.stdout.buffer.write(generate(request).SerializeToString())
    return 0
