"""What the benchmark scripts under ``scripts/`` share: peak memory, timers, synthetic batches, ratio tables.

Each script is a short ``main`` of what it compares; the ways of measuring live here, once, so that
two scripts measure memory, time and throughput the same way and print them the same way.
"""
