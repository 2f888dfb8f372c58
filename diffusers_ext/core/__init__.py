"""Pure tensor math of diffusion sampling and guidance; no diffusers state.

Modules: `schedule` (betas, alphabar, SNR), `posterior` (q(x_s | x_t, x_0), DDIM-eta),
`parameterization` (epsilon / sample / v_prediction / score), `weighting` (loss weights),
`thresholding` (x0 clipping), `guidance` (classifier-free and classifier guidance) and
`langevin` (Langevin steps and step sizes).
"""
