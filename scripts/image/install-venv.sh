#!/bin/sh
# Build stage of both images (Containerfile, Containerfile.operator): the project's virtual environment at
# /opt/retina, installed non-editable from the build context in /src.
#
# USAGE: install-venv.sh deps   - the dependencies of pyproject.toml (a layer that survives code changes)
#        install-venv.sh project - generated protobuf code, then the project itself; build-only tools removed
# The venv sees the system site-packages, so Debian's python3-bpfcc (bcc) is importable in the agent image.
# pip uses the CA bundle given as the build secret `ca` when there is one (never stored in a layer).
set -eu
export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
[ -s /run/secrets/ca ] && export PIP_CERT=/run/secrets/ca
venv=/opt/retina
case "$1" in
  deps)
    python3 -m venv --system-site-packages "$venv"
    deps=$(python3 -c 'import tomllib; print("\n".join(tomllib.load(open("/src/pyproject.toml", "rb"))["project"]["dependencies"]))')
    # grpcio-tools: protobuf code generation at build time only (removed in `project`).
    echo "$deps" | xargs "$venv/bin/pip" install -q "grpcio-tools>=1.60" "setuptools>=68"
    ;;
  project)
    cd /src
    "$venv/bin/python" -m retina_core.proto.generate
    "$venv/bin/pip" install -q --no-deps --no-build-isolation /src
    "$venv/bin/pip" uninstall -q -y grpcio-tools setuptools
    "$venv/bin/pip" check
    "$venv/bin/pip" uninstall -q -y pip
    # Tests and type stubs of dependencies are not needed at run time.
    find "$venv" -depth \( -name tests -o -name test \) -path '*/site-packages/*' -type d -exec rm -rf {} +
    find "$venv" -name '*.pyi' -delete
    ;;
  *) echo "usage: $0 deps|project" >&2; exit 2 ;;
esac
