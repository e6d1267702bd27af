"""diffusion: a compact latent text-to-image diffusion model (part 3; so far the noise schedule and the 2-D toy)."""
