# Sourced by bench/device_*.sh on the lent GPU machine (and in their SMOKE checks here): the fp16 MiniLM
# unpacked from .ckpt/minilm-fp16.tar.xz when only the archive travelled (the tree travels in 64 MiB; the
# archive is 5 MB smaller), pydantic from the carried .whl when the machine lacks it, and PYTHONPATH.
PY=${PY:-python3}
MODEL=${MODEL:-.ckpt/minilm-fp16}
[ -d "$MODEL" ] || [ ! -f "$MODEL.tar.xz" ] || $PY -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" "$MODEL.tar.xz" "$(dirname "$MODEL")"
if ! $PY -c "import pydantic" 2>/dev/null; then
  $PY -m pip install -q --no-index --find-links .whl --target /tmp/pylib pydantic pydantic-core annotated-types typing-inspection typing-extensions 2>&1 | tail -2
fi
export PYTHONPATH=$PWD:/tmp/pylib${PYTHONPATH:+:$PYTHONPATH}
