"""diffusion: a compact latent text-to-image diffusion model — autoencoder, UNet, samplers, CFG, img2img,
inpainting, classifier guidance, evaluation — and the article's 2-D toy."""
