"""The benchmarks of rmt, one script per benchmark; run each from the repository root as a module:

    python -m benchmarks.reproduce --smoke
    python -m benchmarks.capacity --help
    python -m benchmarks.armt_speed --help
    python -m benchmarks.bptt_memory --help

`common` holds what the scripts share, `reproduce_report` the tables and plots of `reproduce`, `published/` the
published numbers the scripts compare against (with their citation) and `results/` the committed results.
"""
