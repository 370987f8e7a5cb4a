"""``make bench``: this system against a seed-faithful baseline, measured in the same run.

See README.md beside this file for what each row means.
"""
