"""jaxswin: DualSwinFusionSeg (dual SwinV2 encoders, multi-scale fusion, UNet++) in JAX/Flax."""

__version__ = "0.1.0"
