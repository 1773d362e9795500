"""Native kernels edgekit builds itself (the 1-bit ``BinaryMatMul`` OpenVINO extension: :mod:`.xnor`).

Importing this package imports nothing heavy; the compiler runs only when a kernel is built."""
