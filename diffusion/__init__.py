"""diffusion: a compact latent text-to-image diffusion model (built in part 3; no commands yet)."""
