"""gtasr-deploy: GTASR one-step diffusion super-resolution (x4) from paper to production."""

__version__ = "0.1.0"
