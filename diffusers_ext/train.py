"""`python -m diffusers_ext.train` / `accelerate launch -m diffusers_ext.train`: see `training.main`."""

from .training.main import cli

if __name__ == "__main__":
    cli()
