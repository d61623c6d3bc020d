"""How the diffusion model runs on the device: replayed programs, dynamo-compiled graphs, host values, step pacing."""
