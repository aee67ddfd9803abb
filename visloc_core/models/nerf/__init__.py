"""Scene radiance fields (NeRF) for the NeRF-based training stages (PoseFormer_sem, PMNet): field,
encodings, rays, volume rendering, sampling, artifact. See docs/nerf.md."""
