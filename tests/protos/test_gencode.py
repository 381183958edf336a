"""The checked-in gencode matches protos/*.proto and imports everywhere."""

import importlib
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from google.protobuf import descriptor_pb2

from tests.conftest import REPO_ROOT

sys.path.insert(0, os.path.join(REPO_ROOT, "protos"))
import regenerate  # noqa: E402  (protos/regenerate.py)


def compiled_descriptors():
    """FileDescriptorProtos protoc makes from the current .proto files."""
    grpc_tools = pytest.importorskip(
        "grpc_tools", reason="grpcio-tools (test extra) compiles the protos")
    del grpc_tools
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "set.pb")
        subprocess.check_call(
            [sys.executable, "-m", "grpc_tools.protoc", f"-I{REPO_ROOT}",
             f"--descriptor_set_out={out}"] + regenerate.proto_files(),
            cwd=REPO_ROOT)
        with open(out, "rb") as f:
            files = descriptor_pb2.FileDescriptorSet.FromString(f.read())
    return {f.name: f for f in files.file}


def normalized(file_proto):
    """Removes what differs between protoc versions but not in meaning.

    protoc's descriptor sets carry json_name where embedded gencode does not,
    and protoc versions print float defaults differently ("0.7" versus
    "0.699999988"); compare defaults as float32 values.
    """
    float_types = (descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT,
                   descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE)

    def clear(message_protos):
        for message in message_protos:
            for field in message.field:
                field.ClearField("json_name")
                if field.type in float_types and field.HasField(
                        "default_value"):
                    field.default_value = repr(
                        float(np.float32(field.default_value)))
            clear(message.nested_type)

    clear(file_proto.message_type)
    return file_proto


def test_every_proto_has_checked_in_gencode_that_matches_it():
    compiled = compiled_descriptors()
    assert set(compiled) == set(regenerate.proto_files())
    for name, expected in compiled.items():
        module_name = os.path.basename(name).replace(".proto", "_pb2")
        module = importlib.import_module(f"max_deeplab_tf.protos.{module_name}")
        actual = descriptor_pb2.FileDescriptorProto.FromString(
            module.DESCRIPTOR.serialized_pb)
        assert normalized(actual) == normalized(expected), (
            f"max_deeplab_tf/protos/{module_name}.py is stale: run "
            "`python protos/regenerate.py` after editing " + name)


def test_gencode_is_old_enough_for_every_supported_runtime():
    # TF 2.20 accepts protobuf >= 5.28.0; gencode newer than the runtime is
    # refused at import, so the generator must be older than that.
    gencode_dir = os.path.join(REPO_ROOT, "max_deeplab_tf", "protos")
    for name in os.listdir(gencode_dir):
        if not name.endswith("_pb2.py"):
            continue
        with open(os.path.join(gencode_dir, name)) as f:
            header = f.read(400)
        version = header.split("Protobuf Python Version: ")[1].split()[0]
        major, minor = (int(v) for v in version.split(".")[:2])
        assert (major, minor) <= (5, 28), (name, version)


def test_fix_imports_makes_imports_package_absolute():
    source = "from protos import model_pb2 as protos_dot_model__pb2\n"
    assert regenerate.fix_imports(source) == (
        "from max_deeplab_tf.protos import model_pb2 as "
        "protos_dot_model__pb2\n")
