"""The folder application: plan, preflight, completion records, progress, the runner and its
video jobs (one path and one skip rule for an image and for a video)."""
