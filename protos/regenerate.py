"""Regenerates the Python protobuf code in max_deeplab_tf/protos/.

The gencode is produced by grpcio-tools 1.66.2 (protoc for protobuf 5.27.2),
older than the oldest protobuf runtime TensorFlow 2.20 accepts (5.28.0), so it
imports on every runtime from 5.28 to 7.x. The script installs that
grpcio-tools into a throw-away virtual environment, so it needs access to the
package index.

Usage (from the repository root):
    python protos/regenerate.py
"""

import glob
import os
import re
import subprocess
import tempfile
import venv

GRPCIO_TOOLS_VERSION = "1.66.2"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUT_PACKAGE = "max_deeplab_tf.protos"


def fix_imports(source: str) -> str:
    """Makes the generated cross-file imports package-absolute."""
    return re.sub(
        r"^from protos import (\w+_pb2)",
        rf"from {OUTPUT_PACKAGE} import \1",
        source,
        flags=re.M,
    )


def proto_files() -> list:
    """Returns the .proto sources, relative to the repository root."""
    return sorted(
        os.path.relpath(p, REPO_ROOT)
        for p in glob.glob(os.path.join(REPO_ROOT, "protos", "*.proto"))
    )


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env_dir = os.path.join(tmp, "venv")
        venv.create(env_dir, with_pip=True)
        python = os.path.join(env_dir, "bin", "python")
        subprocess.check_call(
            [python, "-m", "pip", "install", "-q",
             f"grpcio-tools=={GRPCIO_TOOLS_VERSION}"])
        out_dir = os.path.join(tmp, "out")
        os.makedirs(out_dir)
        subprocess.check_call(
            [python, "-m", "grpc_tools.protoc", f"-I{REPO_ROOT}",
             f"--python_out={out_dir}"] + proto_files(),
            cwd=REPO_ROOT)
        target_dir = os.path.join(REPO_ROOT, *OUTPUT_PACKAGE.split("."))
        for generated in sorted(
                glob.glob(os.path.join(out_dir, "protos", "*_pb2.py"))):
            with open(generated) as f:
                source = fix_imports(f.read())
            target = os.path.join(target_dir, os.path.basename(generated))
            with open(target + ".tmp", "w") as f:
                f.write(source)
            os.replace(target + ".tmp", target)
            print("wrote", os.path.relpath(target, REPO_ROOT))


if __name__ == "__main__":
    main()
