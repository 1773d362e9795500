"""``python -m edgekit.cli`` (and ``torchrun -m edgekit.cli quantize ...`` on several GPUs)."""

from edgekit.cli.app import main

main()
