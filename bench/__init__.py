"""git_scratch vs transformers: speed, peak memory and identical outputs on the same weights.

    python -m bench --help

workloads.py (what runs), run.py (timing and the report), memory.py (peak memory, one child process per
side and workload), machine.py (the CPU, its matmul throughput and memory bandwidth). parity.py is the
separate numerical-parity script. modes.py: git_scratch's int8 and bfloat16 modes as columns (`--modes`);
quantize.py (`python -m bench.quantize`): their agreement with float32, and the int8 kernels timed.
transformers is imported here, never by git_scratch itself.
"""
