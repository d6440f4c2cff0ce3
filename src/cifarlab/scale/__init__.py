"""Beyond one run: statistics across seeds, grid sweeps, and the Ray jobs that train them.

statistics.py  mean, spread and 95% intervals across seeds; Welch comparisons (SciPy)
sweep.py       a grid of settings × seeds: expand, train, summarise (`cifarlab sweep`)
ray_jobs.py    many run folders trained as Ray tasks, locally or on a cluster
"""
