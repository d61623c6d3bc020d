"""The devices the diffusion model runs on: torch_xla and torchax behind one interface, the mesh, chip memory, XLA's counters."""
