"""Serving and scale-out on Ray (pip extra ``serve``).

* :mod:`.service`: the HTTP service (Ray Serve) with dynamic batching of tiles across
  concurrent requests, a web page, a health endpoint and 4xx answers for bad uploads.
* :mod:`.cluster`: ``gtasr-upscale``-compatible folder batch on a Ray cluster (actors per CPU
  share or GPU), same output names and bytes as the single-machine CLI.

Both decode, upscale and encode exactly as ``gtasr-upscale`` does (:mod:`gtasr_deploy.media.images`
and :class:`gtasr_deploy.upscaler.Upscaler`); Ray is imported only by the modules that need it.
"""
