"""DualSwinFusionSeg and its ablation variants (paper §3 and §4.4), built from a ModelConfig."""
