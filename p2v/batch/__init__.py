"""p2v batch: many conversion jobs from one manifest, with a ledger that makes reruns resume.

manifest.py checks the TOML file into JobSpecs; ledger.py is the SQLite record of every job;
execute.py is the one job function (picklable, the same for local processes and a cluster);
pool.py runs job functions in child processes; dask_pool.py (with jobproc.py) on Dask
workers of several conversion hosts; driver.py schedules, records and reports.
"""
