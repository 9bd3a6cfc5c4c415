"""Rendering: pinhole cameras and a differentiable Gaussian rasteriser (pure JAX, static shapes).

  cameras.py    Camera (OpenCV convention, as the world's), intrinsics, look_at, orbit, project
  gaussians.py  render(means, scales, quats, opacities, colors, camera, width=, height=) -> rgb,
                depth, alpha, features; EWA projection, input checks, tile_overflow
  raster.py     tiles / sub-tiles with the K nearest-in-depth candidates, compositing with a
                hand-written backward pass
"""
