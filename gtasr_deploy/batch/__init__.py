"""The folder application: plan, preflight, completion records, progress, and the runner."""
